"""Net3D for the default zoo as torch modules: MediaPipe FaceLandmarker's own networks and face geometry,
ported (engines.models.facelandmarker, face_geometry, facedetector), so it runs on any device and
batches frames of several sessions, each of its own size, through one landmark-net call.

It reads what MediaPipe's runtime reads (the runtime is the reference it is tested against): the
detector finds a face only when a session has no track; the landmark net reads the tracking crop,
whose next position comes from these landmarks. The engine's batched Net3D stage
(streamer.reenact.net3d_stage) runs it on a GPU; on the CPU the runtime (engines.method.net3d) is
faster and stays the default.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.core.views import frame_to_float
from engines.method.net3d import FaceReading
from engines.models.face_geometry import FaceGeometry
from engines.models.facedetector import FaceDetectorNet
from engines.models.facelandmarker import BlendshapeNet, LandmarkNet, crop, roi_from_landmarks, uncrop_landmarks

MIN_PRESENCE = 0.5   # MediaPipe's default min_tracking_confidence


class TorchNet3D(nn.Module):
    def __init__(self, detector: FaceDetectorNet, landmark_net: LandmarkNet, blendshape_net: BlendshapeNet,
                 geometry: FaceGeometry):
        super().__init__()
        self.detector, self.landmark_net = detector, landmark_net
        self.blendshape_net, self.geometry = blendshape_net, geometry

    @classmethod
    def from_task(cls, path: str | Path | None = None) -> "TorchNet3D":
        return cls(FaceDetectorNet.from_task(path), LandmarkNet.from_task(path), BlendshapeNet.from_task(path),
                   FaceGeometry(path)).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.geometry.canonical.device

    @torch.no_grad()
    def detect(self, frame: torch.Tensor) -> torch.Tensor | None:
        """frame uint8 [H, W, 3] on this device -> the best face's tracking ROI [5], or None."""
        found = self.detector(frame_to_float(frame[None]), max_faces=1)[0]
        return found["rois"][0].float() if found["rois"].shape[0] else None

    @torch.no_grad()
    def crop(self, frame: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """frame uint8 [H, W, 3], roi [5] -> the landmark net's input [3, 256, 256]."""
        return crop(frame_to_float(frame[None]), roi[None])[0]

    @torch.no_grad()
    def forward(self, patches: torch.Tensor, rois: torch.Tensor, sizes: list[tuple[int, int]],
                landmark_net=None) -> list[dict]:
        """patches [B, 3, 256, 256], rois [B, 5], sizes: each frame's (W, H) -> one dict per frame:
        landmarks [478, 3] (image pixels, MediaPipe's x*W, y*H, z*W), blendshapes [52], rotation [3, 3],
        presence (float), roi_next [5]. The landmark net runs once for the batch; the rest per frame size
        (a call's sessions usually share one). landmark_net: what runs the landmark net (default: the
        module itself; the stage passes its compiled engines, engines.accel.buckets)."""
        lm_crop, presence = (landmark_net or self.landmark_net)(patches)
        out: list[dict] = [{} for _ in sizes]
        for (wid, hgt) in set(sizes):
            idx = [i for i, s in enumerate(sizes) if s == (wid, hgt)]
            sel = torch.as_tensor(idx, device=patches.device)
            lm = uncrop_landmarks(lm_crop[sel], rois[sel], image_wh=(wid, hgt))
            scores = self.blendshape_net(lm[..., :2])
            rot = self.geometry(lm, wid, hgt)
            roi_next = roi_from_landmarks(lm[..., :2], wid, hgt)
            for j, i in enumerate(idx):
                out[i] = {"landmarks": lm[j], "blendshapes": scores[j], "rotation": rot[j],
                          "presence": float(presence[i]), "roi_next": roi_next[j]}
        return out


def frame_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """An RGB uint8 frame -> uint8 [H, W, 3] on device."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if not image.flags.writeable:   # torch shares the array's memory and wants it writable
        image = image.copy()
    return torch.from_numpy(image).to(device)


class Reader:
    """A Net3D reader on the ported networks, with the interface of MediaPipe's runtime: detect, crop,
    read. `track=True` is its video mode: the next frame's crop comes from this frame's landmarks and
    the detector runs only when the track is lost (then again on the same frame, as the image mode
    would find the face); `track=False` is its image mode, every frame on its own. `run` reads one
    crop (patch, roi, frame size) -> the net's result; the engine's stage passes its scheduler's."""

    def __init__(self, net: TorchNet3D, track: bool = False, run=None, min_presence: float = MIN_PRESENCE):
        self.net, self.track, self.min_presence = net, track, min_presence
        self._run = run or self._run_alone
        self.roi: torch.Tensor | None = None
        self.detections = 0

    def _run_alone(self, item) -> dict:
        patch, roi, size = item
        return self.net(patch[None], roi[None], [size])[0]

    def read(self, image: np.ndarray, timestamp_ms: int | None = None) -> FaceReading | None:
        """The face in an RGB uint8 frame, or None."""
        frame = frame_tensor(image, self.net.device)
        size = (frame.shape[1], frame.shape[0])
        for _ in range(2):
            tracked = self.roi is not None
            if not tracked:
                self.detections += 1
                self.roi = self.net.detect(frame)
                if self.roi is None:
                    return None
            result = self._run((self.net.crop(frame, self.roi), self.roi, size))
            if result["presence"] >= self.min_presence and bool(torch.isfinite(result["roi_next"]).all()):
                self.roi = result["roi_next"] if self.track else None
                return reading(result)
            self.roi = None
            if not tracked:   # a fresh detection the landmark net does not confirm: no face
                return None
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def reading(result: dict) -> FaceReading:
    """One frame's result of TorchNet3D -> the reading MediaPipe's runtime gives (engines.method.net3d);
    the transformation matrix carries the rotation only (p needs no more)."""
    matrix = np.eye(4, dtype=np.float32)
    matrix[:3, :3] = result["rotation"].float().cpu().numpy()
    return FaceReading(result["landmarks"].float().cpu().numpy(), result["blendshapes"].float().cpu().numpy(),
                       matrix)
