"""MediaPipe's face-geometry pose (the facial transformation matrix) from landmarks, in plain torch.

The default zoo's p needs yaw/pitch/roll as MediaPipe's runtime reports them (engines/method/pose.py). The
runtime gets them from its geometry pipeline; this module redoes that pipeline on the PyTorch port's
landmarks so the whole per-frame stage can run on a GPU (no mediapipe there). Facts, from MediaPipe's
face_geometry sources and the `.task` bundle's geometry_pipeline_metadata_landmarks.binarypb:

- metadata: canonical face mesh (468 vertices, x y z u v, centimetres; x right, y up, z toward the
  viewer) and a Procrustes basis of 33 (landmark id, weight) pairs;
- camera: perspective frustum, vertical FOV 63 degrees, near 1, origin at the top-left corner;
- screen -> metric: landmarks normalised to [0, 1] (z in x units); y flipped; x, y, z scaled to the
  frustum's near plane; depth offset = mean z; scale estimated twice by weighted Procrustes
  (canonical -> landmarks), each time z <- (z - offset + near) / scale, x, y <- x, y * z / near, z
  negated; the pose is the weighted Procrustes fit of the canonical mesh to the metric landmarks.

The rotation is found with Horn's quaternion method (largest eigenvector of a 4x4 matrix, by repeated
squaring): no SVD or eigen solver, so no host sync, and it can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.models.facelandmarker import read_task_file

METADATA = "geometry_pipeline_metadata_landmarks.binarypb"
VERTICAL_FOV_DEG = 63.0
NEAR = 1.0
SQUARINGS = 12  # power iteration by squaring: eigen-gap ratio ** 4096, far past float precision


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        c = buf[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return out, i


def _fields(buf: bytes):
    """Protocol-buffer wire format: yields (field number, wire type, value bytes or int)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, val


def read_geometry_metadata(task_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canonical vertices [468, 3] float64, basis landmark ids [K] int64, basis weights [K] float64).

    GeometryPipelineMetadata: 1 canonical_mesh (Mesh3d: 3 vertex_buffer floats, x y z u v per vertex),
    2 procrustes_landmark_basis (1 landmark_id, 2 weight), 3 input_source."""
    buf = read_task_file(METADATA, task_path)
    verts, ids, weights = [], [], []
    for field, wire, val in _fields(buf):
        if field == 1 and wire == 2:
            for f2, w2, v2 in _fields(val):
                if f2 == 3 and w2 == 5:
                    verts.append(struct.unpack("<f", v2)[0])
                elif f2 == 3 and w2 == 2:  # packed encoding
                    verts.extend(np.frombuffer(v2, "<f4").tolist())
        elif field == 2 and wire == 2:
            entry = {f2: v2 for f2, _, v2 in _fields(val)}
            ids.append(int(entry.get(1, 0)))
            weights.append(struct.unpack("<f", entry[2])[0] if 2 in entry else 0.0)
    mesh = np.asarray(verts, dtype=np.float64).reshape(-1, 5)[:, :3]
    return mesh, np.asarray(ids, dtype=np.int64), np.asarray(weights, dtype=np.float64)


def _quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def weighted_procrustes(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor):
    """s, R, t minimising sum_j w_j |s R src_j + t - dst_j|^2 (R a proper rotation).

    src [N, 3] or [B, N, 3], dst [B, N, 3], w [N]. Returns s [B], R [B, 3, 3], t [B, 3]."""
    w = (w / w.sum()).view(1, -1, 1)
    if src.dim() == 2:
        src = src.unsqueeze(0)
    ms, md = (src * w).sum(1, keepdim=True), (dst * w).sum(1, keepdim=True)
    a, b = src - ms, dst - md
    m = (a * w).transpose(1, 2) @ b  # [B, 3, 3]: sum w a_i b_j
    sxx, sxy, sxz = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    syx, syy, syz = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    szx, szy, szz = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    n = torch.stack([
        torch.stack([sxx + syy + szz, syz - szy, szx - sxz, sxy - syx], -1),
        torch.stack([syz - szy, sxx - syy - szz, sxy + syx, szx + sxz], -1),
        torch.stack([szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy], -1),
        torch.stack([sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz], -1)], -2)
    # shift to positive semi-definite (|eigenvalue| <= Frobenius norm), then square repeatedly
    eye = torch.eye(4, dtype=n.dtype, device=n.device)
    p = n + n.flatten(1).norm(dim=1).view(-1, 1, 1) * eye
    for _ in range(SQUARINGS):
        p = p / p.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1)
        p = p @ p
    # p ~ v v^T: its column with the largest diagonal entry is the top eigenvector, up to sign
    j = torch.diagonal(p, dim1=-2, dim2=-1).argmax(-1)
    q = torch.gather(p, 2, j.view(-1, 1, 1).expand(-1, 4, 1)).squeeze(-1)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    r = _quaternion_matrix(q)
    var = (a.pow(2).sum(-1, keepdim=True) * w).sum((1, 2))
    s = ((b @ r) * a * w).sum((1, 2)) / var  # sum w b . (R a) / sum w |a|^2
    t = md.squeeze(1) - s.unsqueeze(-1) * (r @ ms.transpose(1, 2)).squeeze(-1)
    return s, r, t


class FaceGeometry(nn.Module):
    """forward(landmarks [B, >=468, 3] in image pixels (x * W, y * H, z * W), image size) ->
    rotation [B, 3, 3] of MediaPipe's facial transformation matrix (canonical face -> camera)."""

    def __init__(self, task_path: str | Path | None = None, fov_deg: float = VERTICAL_FOV_DEG,
                 near: float = NEAR):
        super().__init__()
        mesh, ids, weights = read_geometry_metadata(task_path)
        self.register_buffer("canonical", torch.tensor(mesh, dtype=torch.float32), persistent=False)
        self.register_buffer("basis_ids", torch.tensor(ids), persistent=False)
        self.register_buffer("basis_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.fov = math.radians(fov_deg)
        self.near = near

    def _fit(self, pts: torch.Tensor):
        return weighted_procrustes(self.canonical[self.basis_ids], pts[:, self.basis_ids], self.basis_weights)

    def metric_landmarks(self, landmarks: torch.Tensor, width: int, height: int) -> torch.Tensor:
        lm = landmarks[:, :self.canonical.shape[0], :3]
        h_near = 2 * self.near * math.tan(0.5 * self.fov)
        w_near = width * h_near / height
        x = lm[..., 0] / width * w_near - 0.5 * w_near
        y = (1 - lm[..., 1] / height) * h_near - 0.5 * h_near
        z = lm[..., 2] / width * w_near
        depth = z.mean(dim=1, keepdim=True)

        def metric(scale):
            zz = (z - depth + self.near) / scale.view(-1, 1)
            return torch.stack([x * zz / self.near, y * zz / self.near, -zz], dim=-1)

        s1, _, _ = self._fit(torch.stack([x, y, -z], dim=-1))
        s2, _, _ = self._fit(metric(s1))
        return metric(s1 * s2)

    def forward(self, landmarks: torch.Tensor, width: int, height: int) -> torch.Tensor:
        _, r, _ = self._fit(self.metric_landmarks(landmarks, width, height))
        return r
