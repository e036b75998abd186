"""The official reenactment latent (StelaBou run_inference / generic.generate_image):

    w_r = trunc + psi * ((w_s + [A(dp) on layers 0..K-1, 0 elsewhere]) - trunc)

with trunc = G.mean_latent(4096) ([1, 512], broadcast over layers) and psi = 0.7; the truncation is
applied to every W+ layer, after the shift. The result goes to G.synthesize (fixed noise buffers).
"""
from __future__ import annotations

import torch

from engines.models.generator import LatentGenerator

OFFICIAL_PSI = 0.7


def official_latent(w_source: torch.Tensor, shift: torch.Tensor | None, trunc: torch.Tensor,
                    psi: float = OFFICIAL_PSI) -> torch.Tensor:
    """w_source [B, L, 512]; shift [B, K, 512] (K <= L, added to layers 0..K-1) or None;
    trunc [512], [1, 512] or [B, L, 512]; psi = 1 disables truncation."""
    w = w_source if shift is None else LatentGenerator.apply_shift(w_source, shift)
    if psi == 1.0:
        return w
    m = trunc.to(w)
    if m.ndim == 1:
        m = m[None]
    if m.ndim == 2:
        m = m[:, None, :]
    return m + psi * (w - m)
