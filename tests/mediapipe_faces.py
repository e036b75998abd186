"""Test helper: 478-point landmarks from MediaPipe's own FaceLandmarker runtime (the reference),
plus loaders for the bundled/shared face images used by the SFace and alignment tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VIDEO_FRAMES = (260, 330, 400)  # pexels_woman.mp4: eyes open, face unoccluded, smiling/turning


def detect_landmarks(images: list[np.ndarray], num_faces: int = 1) -> list[list[np.ndarray]]:
    """Per image: a list of [478, 3] normalised landmarks (x, y in 0..1), faces sorted left to right."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from engines.core.modelfiles import model_path
    from engines.core.quiet import native_quiet

    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(model_path("face_landmarker"))), num_faces=num_faces)
    with native_quiet():   # MediaPipe's native start-up lines
        landmarker = vision.FaceLandmarker.create_from_options(opts)
    try:
        out = []
        for img in images:
            res = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            faces = [np.array([[p.x, p.y, p.z] for p in f], np.float32) for f in res.face_landmarks]
            out.append(sorted(faces, key=lambda f: f[:, 0].mean()))
    finally:
        landmarker.close()
    return out


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def video_frames(path: Path, indices=VIDEO_FRAMES) -> list[np.ndarray]:
    import av

    want, frames = set(indices), {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in want:
                frames[i] = f.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return [frames[i] for i in indices]
