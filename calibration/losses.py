"""Calibration losses (paper §3: L = L_shape + L_eye + L_mouth + l_id L_id + l_per L_per).

Landmark pairs are MediaPipe-478 equivalents of the paper's 68-point eye/mouth pairs: upper vs lower
eyelid at three places per eye, and inner/outer lip pairs across the mouth plus its corners.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# (upper, lower) eyelid points; right eye = image left (subject's right)
EYE_PAIRS = [(159, 145), (158, 153), (160, 144),      # right eye
             (386, 374), (385, 380), (387, 373)]      # left eye
MOUTH_PAIRS = [(13, 14), (82, 87), (312, 317), (81, 178), (311, 402),   # inner lips
               (0, 17), (37, 84), (267, 314),                             # outer lips
               (61, 291), (78, 308)]                                      # corners (width)


def pair_distances(lm: torch.Tensor, pairs) -> torch.Tensor:
    a, b = zip(*pairs)
    return (lm[:, list(a)] - lm[:, list(b)]).norm(dim=-1)


def centred(lm: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = (w / w.sum()).view(1, -1, 1)
    return lm - (lm * w).sum(1, keepdim=True)


def landmark_losses(lm_r: torch.Tensor, lm_ref: torch.Tensor, scale: torch.Tensor, rigid: torch.Tensor):
    """Reenacted vs reference landmarks, both [B,478,3] camera frame; scale [B] = source face scale.

    Returns (shape, eye, mouth) in canonical units (the mean face has RMS radius 1), translation-free.
    """
    s = scale.view(-1, 1, 1)
    a, b = centred(lm_r, rigid) / s, centred(lm_ref, rigid) / s
    shape = (a - b).abs().mean()
    eye = (pair_distances(a, EYE_PAIRS) - pair_distances(b, EYE_PAIRS)).abs().mean()
    mouth = (pair_distances(a, MOUTH_PAIRS) - pair_distances(b, MOUTH_PAIRS)).abs().mean()
    return shape, eye, mouth


def identity_loss(emb_r: torch.Tensor, emb_s: torch.Tensor) -> torch.Tensor:
    """1 - cosine of unit face embeddings."""
    return (1 - (F.normalize(emb_r, dim=-1) * F.normalize(emb_s, dim=-1)).sum(-1)).mean()


def lowpass_l1(img_r: torch.Tensor, img_s: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """L1 between 4x-downsampled images: keeps colour, lighting, hair and background of the source
    without penalising the few-pixel geometric motion a pose/expression change needs (our stand-in
    for LPIPS, whose weights the default zoo does not have)."""
    return (F.avg_pool2d(img_r, factor) - F.avg_pool2d(img_s, factor)).abs().mean()
