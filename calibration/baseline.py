"""The closed-form baseline: a least-squares linear map from pose change to latent change.

Fit the forward model p_norm ~ W z + c over the statistics samples (ordinary least squares), then
steer with the minimum-norm latent change that the linear model says produces dp:
dz = pinv(W) dp. It is what "find a linear direction per attribute" methods do (InterFaceGAN-style),
done jointly for all parameters so each direction holds the others fixed to first order.
"""
from __future__ import annotations

import numpy as np
import torch

from calibration.sampling import Pool
from engines.models.directions import Directions


def fit_least_squares(pool: Pool, lo: np.ndarray, hi: np.ndarray, names: list[str], zoo: str,
                      shift_scale: float = 6.0) -> tuple[Directions, np.ndarray]:
    """Returns the baseline as a Directions object (zero bias) and the held-in R^2 per parameter."""
    d = Directions(len(names), pool.latents.shape[1:], shift_scale, names, zoo, lo, hi,
                   meta={"method": "least_squares"})
    ok = pool.detected
    z = pool.latents[ok].reshape(ok.sum(), -1).astype(np.float64)
    p = d.normalise(torch.as_tensor(pool.p[ok], dtype=torch.float64)).numpy()
    X = np.c_[z, np.ones(len(z))]
    coef, *_ = np.linalg.lstsq(X, p, rcond=None)            # [D+1, K]
    resid = p - X @ coef
    r2 = 1 - resid.var(0) / p.var(0)
    W = coef[:-1].T                                          # [K, D]: p change per unit latent change
    with torch.no_grad():
        d.linear.weight.copy_(torch.as_tensor(np.linalg.pinv(W), dtype=torch.float32))
        d.linear.bias.zero_()
    return d.requires_grad_(False), r2
