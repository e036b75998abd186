"""A linear 3D face model from MediaPipe landmarks: identity + expression basis + rigid pose.

The paper's shape loss compares the reenacted face's 3D shape with a reference built from the source's
identity and the target's expression and pose (FLAME: shape_s, exp_t, pose_t). MediaPipe has no
identity/expression split, so we fit one (mirroring the paper's Eq. 1):
  canonical landmarks  C_i = R_i^T (L_i - t_i) / s_i   (similarity Procrustes to the mean shape,
                                                        weighted toward rigid landmarks)
  C_i ~ mu + B e_i     (least squares over the statistics samples; e = expression blendshape scores)
  identity of a face   id_i = C_i - B e_i
  reference shape      L_ref = s_s R_ref (id_s + B e_t)  (centred; R_ref carries the target pose)
Coordinates are "camera" ones: x right, y up, z toward the viewer (image y and MediaPipe z flipped),
the same frame as MediaPipe's facial transformation matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.method.zoo import DATA  # the default zoo's committed data files


def shape_model_path(zoo_name: str) -> Path:
    """Where calibration.train writes a zoo's shape model (the default zoo's is committed)."""
    return DATA / f"{zoo_name}_shape_model.npz"


def to_camera(lm: torch.Tensor) -> torch.Tensor:
    """Landmarks in image pixels (x right, y down, z away) -> camera frame (x right, y up, z toward)."""
    return lm * lm.new_tensor([1.0, -1.0, -1.0])


def similarity_align(X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None = None):
    """Weighted Umeyama: s, R, t minimising sum_j w_j |s R X_j + t - Y_j|^2.

    X, Y [B, N, 3]; w [N] or None. Returns s [B], R [B,3,3] (proper rotation), t [B,3].
    """
    if w is None:
        w = X.new_ones(X.shape[1])
    w = (w / w.sum()).view(1, -1, 1)
    mx, my = (X * w).sum(1, keepdim=True), (Y * w).sum(1, keepdim=True)
    Xc, Yc = X - mx, Y - my
    cov = (Yc * w).transpose(1, 2) @ Xc                      # [B,3,3]
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(U @ Vh))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    var_x = (Xc.pow(2) * w).sum((1, 2))
    s = (S * torch.diagonal(D, dim1=-2, dim2=-1)).sum(-1) / var_x
    t = my.squeeze(1) - s.unsqueeze(-1) * (R @ mx.transpose(1, 2)).squeeze(-1)
    return s, R, t


@dataclass
class ShapeModel:
    mean: torch.Tensor     # [478, 3] canonical mean shape (centred, unit RMS radius)
    basis: torch.Tensor    # [478, 3, E] landmark displacement per unit expression score
    offset: torch.Tensor   # [478, 3] canonical shape at zero expression (mean - basis @ mean_e)
    rigid: torch.Tensor    # [478] Procrustes weights (1 on the least expression-driven landmarks)

    def canonical(self, lm_cam: torch.Tensor):
        """Posed landmarks [B,478,3] (camera frame) -> (canonical [B,478,3], s, R, t)."""
        mean = self.mean.expand(lm_cam.shape[0], -1, -1)
        s, R, t = similarity_align(mean, lm_cam, self.rigid)
        C = ((lm_cam - t.unsqueeze(1)) @ R) / s.view(-1, 1, 1)   # R^T (L - t) / s, row form
        return C, s, R, t

    def identity(self, canonical: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        """Remove the expression part: canonical [B,478,3], expr [B,E] -> identity shape [B,478,3]."""
        return canonical - torch.einsum("nde,be->bnd", self.basis, expr)

    def compose(self, identity: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        return identity + torch.einsum("nde,be->bnd", self.basis, expr)

    def save(self, path) -> None:
        np.savez_compressed(path, **{k: v.numpy() for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path) -> "ShapeModel":
        with np.load(path) as f:
            return cls(**{k: torch.as_tensor(f[k]) for k in cls.__dataclass_fields__})


def fit_shape_model(lm_cam: torch.Tensor, expr: torch.Tensor, iters: int = 3,
                    rigid_fraction: float = 0.4) -> ShapeModel:
    """lm_cam [N,478,3] camera-frame landmarks, expr [N,E] -> ShapeModel (float64 inside)."""
    L, E = lm_cam.double(), expr.double()
    w = L.new_ones(L.shape[1])
    mean = L[0] - L[0].mean(0)
    for _ in range(iters):
        for _ in range(3):  # generalised Procrustes: align all to the mean, re-estimate the mean
            s, R, t = similarity_align(mean.expand(len(L), -1, -1), L, w)
            C = ((L - t.unsqueeze(1)) @ R) / s.view(-1, 1, 1)
            mean = C.mean(0)
            mean = mean - (mean * (w / w.sum()).unsqueeze(1)).sum(0)
            mean = mean / mean.pow(2).sum(1).mean().sqrt()
        X = torch.cat([E, E.new_ones(len(E), 1)], 1)                  # [N, E+1]
        coef = torch.linalg.lstsq(X, C.reshape(len(C), -1)).solution  # [E+1, 478*3]
        basis = coef[:-1].T.reshape(L.shape[1], 3, E.shape[1])
        motion = basis.pow(2).sum((1, 2)).sqrt()
        w = (motion <= torch.quantile(motion, rigid_fraction)).double()
    offset = coef[-1].reshape(L.shape[1], 3)
    return ShapeModel(mean.float(), basis.float(), offset.float(), w.float())
