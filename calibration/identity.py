"""Identity similarity with SFace: align each face by five MediaPipe landmarks, embed, compare.

Used by evaluation (source vs reenacted), enrollment (photo vs reconstruction) and training
(a differentiable loss: the same alignment done with grid_sample).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engines.core.views import to_uint8
from engines.method.face_align import align_112, five_points_from_mediapipe
from engines.models.sface import SFace


def points_from_landmarks(landmarks):
    """MediaPipe landmarks in continuous pixels (x * W) -> five alignment points in pixel-index
    coordinates (pixel centres at integers), numpy or torch."""
    return five_points_from_mediapipe(landmarks) - 0.5


class IdentityScorer:
    def __init__(self, param_names=None, device: str = "cpu"):
        self.param_names = list(param_names or [])
        self.net = SFace.from_onnx().to(device).eval().requires_grad_(False)
        self.device = device

    @staticmethod
    def read(views01: torch.Tensor, net3d):
        """Runtime Net3D readings of [B,3,H,W] images in [0,1] (None where no face)."""
        return [net3d.read(a) for a in to_uint8(views01)]

    def embed_points(self, images01: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [0,1], five points [B,5,2] in their pixels -> unit embeddings [B,128]."""
        faces = align_112(images01.to(self.device), points.to(self.device))
        return F.normalize(self.net(faces), dim=-1)

    def embed(self, images01: torch.Tensor, faces) -> torch.Tensor:
        """Embeddings for runtime readings `faces` (zeros for None)."""
        out = torch.zeros(len(faces), 128)
        idx = [i for i, f in enumerate(faces) if f is not None]
        if idx:
            pts = torch.stack([torch.as_tensor(points_from_landmarks(faces[i].landmarks),
                                               dtype=torch.float32) for i in idx])
            with torch.no_grad():
                out[idx] = self.embed_points(images01[idx].float(), pts).cpu()
        return out
