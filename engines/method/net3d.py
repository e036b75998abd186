"""Net3D for the default zoo: MediaPipe FaceLandmarker through mediapipe's own runtime.

Reads 478 3D landmarks, 52 blendshapes and the facial transformation matrix per face, and turns them
into the pose vector p of engines.method.pose. This is the reference reader: calibration statistics,
evaluation and streaming use it; training backpropagates through the PyTorch port instead
(engines.models.facelandmarker), which is tested against this runtime.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass

import numpy as np

from engines.core.errors import UserError
from engines.core.modelfiles import model_path
from engines.core.quiet import native_quiet
from engines.method.pose import PARAM_NAMES, pose_vector

os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging: warnings and up only

# A mediapipe landmarker must be closed explicitly, never by the garbage collector: its close()
# hands work to a one-thread executor, and when the landmarker sits in a reference cycle the cycle
# collector may already have retired that executor's thread, so close() from __del__ waits forever
# (seen as a hung test). Every open landmarker is therefore held here until close(); whatever is
# still open at exit is closed while the runtime still exists.
_OPEN: set = set()


@atexit.register
def _close_all() -> None:
    for landmarker in list(_OPEN):
        landmarker.close()
    _OPEN.clear()


@dataclass
class FaceReading:
    landmarks: np.ndarray    # [478, 3] float32: x, y in input pixels, z in the same pixel scale
    blendshapes: np.ndarray  # [52] float32 scores, mediapipe order (engines.method.pose.BLENDSHAPE_NAMES)
    matrix: np.ndarray       # [4, 4] float32 canonical face -> camera transform

    @property
    def p(self) -> np.ndarray:
        return pose_vector(self.matrix, self.blendshapes)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 of the landmarks, in pixels."""
        (x0, y0), (x1, y1) = self.landmarks[:, :2].min(0), self.landmarks[:, :2].max(0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


# find_all's windows: at most 1/8 of the photo's longer side (faces down to ~1/40 of it, ~200 windows
# in all, ~1 s to refuse a photo without a face) and at least 96 px (a face there: ~20-50 px)
WINDOW_LEVELS = 3
MIN_WINDOW = 96
# ... and where neither finds one, the photo with its edge pixels repeated around it by this share of its
# longer side: the detector misses a face the photo's edge cuts once it is also tilted (a smiling portrait
# cut through the cheek and turned 10 degrees: none found; padded, found whole)
EDGE_PAD = 0.1


class MediaPipeNet3D:
    """mode 'image' detects on every call; 'video' tracks (timestamps must increase)."""

    param_names = PARAM_NAMES

    def __init__(self, mode: str = "image", num_faces: int = 1, min_confidence: float = 0.5):
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise UserError(f"MediaPipe's runtime is not installed ({e}): pip install mediapipe, or read "
                            f"with its networks ported to torch (--net3d torch)") from None
        self._mp = mp
        running = {"image": vision.RunningMode.IMAGE, "video": vision.RunningMode.VIDEO}[mode]
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path("face_landmarker"))),
            running_mode=running, num_faces=num_faces,
            min_face_detection_confidence=min_confidence, min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        with native_quiet():   # MediaPipe's start-up log lines (engines/core/quiet.py)
            self._landmarker = vision.FaceLandmarker.create_from_options(opts)
        self._warm = False     # the graph's calculators finish starting (and log) on the first frame
        self.mode = mode
        self._last_ts = -1
        _OPEN.add(self._landmarker)

    def read_all(self, image: np.ndarray, timestamp_ms: int | None = None) -> list[FaceReading]:
        """All faces in an RGB uint8 image, largest first."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        h, w = image.shape[:2]
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image)
        with native_quiet() if not self._warm else contextlib.nullcontext():
            if self.mode == "video":
                ts = self._last_ts + 1 if timestamp_ms is None else max(int(timestamp_ms), self._last_ts + 1)
                self._last_ts = ts
                result = self._landmarker.detect_for_video(mp_image, ts)
            else:
                result = self._landmarker.detect(mp_image)
        self._warm = True
        faces = []
        for lms, shapes, mat in zip(result.face_landmarks, result.face_blendshapes,
                                    result.facial_transformation_matrixes):
            lm = np.array([(q.x * w, q.y * h, q.z * w) for q in lms], dtype=np.float32)
            bs = np.array([c.score for c in shapes], dtype=np.float32)
            faces.append(FaceReading(lm, bs, np.asarray(mat, dtype=np.float32)))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def find_all(self, image: np.ndarray) -> list[FaceReading]:
        """All faces of a photo (image mode), largest first, small ones included: the detector reads a
        128-px view of the whole image and misses a face under ~1/5 of the frame (a group at a table:
        six faces of 100 px in 1280, none found). Where the whole image shows none, square windows
        half as large again at each level (overlapping by half, so each face small enough for a level
        lies wholly inside one of its windows) are read until a level finds one. Last, for a face the
        photo's edge cuts, the same on the photo padded with its edge pixels (EDGE_PAD); landmarks stay in
        the photo's coordinates (outside it where the face is)."""
        faces = self._found(image)
        if faces:
            return faces
        pad = int(EDGE_PAD * max(image.shape[:2]))
        return _moved(self._found(np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")), -pad, -pad)

    def _found(self, image: np.ndarray) -> list[FaceReading]:
        """find_all's faces of the image as it is: the whole, then window levels until one finds a face."""
        faces = self.read_all(image)
        for side in _window_sides(image):
            if faces:
                break
            faces = _distinct(self._read_windows(image, side))
        return faces

    def find_every(self, image: np.ndarray) -> list[FaceReading]:
        """Every face of a photo, largest first: the whole image's and those of windows at every level
        (find_all stops at the first level that finds one; a group photo holds faces of every size)."""
        found = [(face, 0.0) for face in self.read_all(image)]
        for side in _window_sides(image):
            found += self._read_windows(image, side)
        return _distinct(found)

    def _read_windows(self, image: np.ndarray, side: int) -> list[tuple[FaceReading, float]]:
        """Every face in each window of `side` px, in the image's coordinates, with its centre's distance
        from its window's centre (in window sides)."""
        h, w = image.shape[:2]
        found = []
        for y in _starts(h, side):
            for x in _starts(w, side):
                window = np.ascontiguousarray(image[y:y + side, x:x + side])
                for face in _moved(self.read_all(window), x, y):
                    x0, y0, x1, y1 = face.box
                    off = np.hypot((x0 + x1) / 2 - x - side / 2, (y0 + y1) / 2 - y - side / 2) / side
                    found.append((face, float(off)))
        return found

    def read(self, image: np.ndarray, timestamp_ms: int | None = None) -> FaceReading | None:
        """The largest face, or None when there is no face (an explicit no-face result)."""
        faces = self.read_all(image, timestamp_ms)
        return faces[0] if faces else None

    def close(self) -> None:
        landmarker, self._landmarker = getattr(self, "_landmarker", None), None
        if landmarker is not None:
            landmarker.close()
            _OPEN.discard(landmarker)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _window_sides(image: np.ndarray) -> list[int]:
    """The window sides of find_all's levels: 1/2, 1/4, ... of the longer side, down to MIN_WINDOW."""
    longer = max(image.shape[:2])
    return [longer >> level for level in range(1, WINDOW_LEVELS + 1) if longer >> level >= MIN_WINDOW]


def _starts(length: int, side: int) -> list[int]:
    """Window starts along one axis: every side/2 px, the last flush with the end."""
    if length <= side:
        return [0]
    return sorted({*range(0, length - side, side // 2), length - side})


def _moved(faces: list[FaceReading], dx: int, dy: int) -> list[FaceReading]:
    """faces with their landmarks moved by (dx, dy) px: from a window's or a padded image's coordinates
    to the photo's."""
    for face in faces:
        face.landmarks[:, 0] += dx
        face.landmarks[:, 1] += dy
    return faces


def _distinct(found: list[tuple[FaceReading, float]]) -> list[FaceReading]:
    """One reading per face among overlapping windows' (a face whose centre lies within half the width
    of one already kept is the same face), each the reading nearest its window's centre (a face at a
    window's edge may be cut), largest first."""
    kept: list[FaceReading] = []
    for face, _ in sorted(found, key=lambda f: f[1]):
        if all(np.hypot(*(_centre(face) - _centre(k))) > (k.box[2] - k.box[0]) / 2 for k in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: f.area, reverse=True)


def _centre(face: FaceReading) -> np.ndarray:
    x0, y0, x1, y1 = face.box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])
