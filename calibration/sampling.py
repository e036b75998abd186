"""Sample random latents, render them, and read their pose with the Net3D runtime.

This is the shared data source of calibration: statistics, the least-squares baseline, the training
pool and held-out evaluation pairs all come from `sample_pool`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from engines.core.views import net3d_view, to_uint8
from engines.method.net3d import MediaPipeNet3D


@dataclass
class Pool:
    latents: np.ndarray      # [N, *latent_shape] float32
    detected: np.ndarray     # [N] bool
    p: np.ndarray            # [N, K] float64, NaN where no face
    landmarks: np.ndarray    # [N, 478, 3] float32 in Net3D view pixels, NaN where no face
    blendshapes: np.ndarray  # [N, 52] float32

    def save(self, path) -> None:
        np.savez_compressed(path, **self.__dict__)

    @classmethod
    def load(cls, path) -> "Pool":
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls.__dataclass_fields__})

    def subset(self, mask) -> "Pool":
        return Pool(**{k: v[mask] for k, v in self.__dict__.items()})


@torch.no_grad()
def read_images(images: torch.Tensor, net3d: MediaPipeNet3D):
    """Generator outputs [B,3,R,R] in [-1,1] -> per-image (p | None, landmarks, blendshapes)."""
    out = []
    for arr in to_uint8(net3d_view(images.float())):
        face = net3d.read(arr)
        out.append(face)
    return out


@torch.no_grad()
def render_and_read(generator, latents: torch.Tensor, net3d: MediaPipeNet3D, batch: int = 100):
    """Render latents in batches and read each image; returns the arrays of a Pool."""
    n, k = latents.shape[0], len(net3d.param_names)
    p = np.full((n, k), np.nan)
    lms = np.full((n, 478, 3), np.nan, np.float32)
    bss = np.full((n, 52), np.nan, np.float32)
    for s in range(0, n, batch):
        faces = read_images(generator.synthesize(latents[s:s + batch]), net3d)
        for j, face in enumerate(faces):
            if face is not None:
                p[s + j], lms[s + j], bss[s + j] = face.p, face.landmarks, face.blendshapes
    return p, lms, bss


def sample_pool(generator, n: int, seed: int, batch: int = 100, progress: bool = True) -> Pool:
    gen = torch.Generator().manual_seed(seed)
    latents = generator.sample_latents(n, generator=gen)
    net3d = MediaPipeNet3D("image")
    try:
        k = len(net3d.param_names)
        p = np.full((n, k), np.nan)
        lms = np.full((n, 478, 3), np.nan, np.float32)
        bss = np.full((n, 52), np.nan, np.float32)
        bar = tqdm(total=n, desc="render+read", unit="img", disable=not progress)
        for s in range(0, n, batch):
            p[s:s + batch], lms[s:s + batch], bss[s:s + batch] = render_and_read(
                generator, latents[s:s + batch], net3d, batch)
            bar.update(min(batch, n - s))
        bar.close()
    finally:
        net3d.close()
    detected = ~np.isnan(p).any(1)
    return Pool(latents.numpy().astype(np.float32), detected, p, lms, bss)
