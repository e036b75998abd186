"""The generator interface every zoo implements: latent -> RGB image in [-1, 1], NCHW float.

A zoo's latent can be a flat vector (DCGAN's z) or a stack of per-layer codes (StyleGAN2's W+); the
direction matrix produces a shift for the first `shift_layers` layers, and `apply_shift` adds it.
"""
from __future__ import annotations

import torch
from torch import nn


class LatentGenerator(nn.Module):
    #: shape of one latent code, without the batch dimension
    latent_shape: tuple[int, ...] = ()
    #: output side length in pixels
    resolution: int = 0
    #: whether per-frame inference should store the weights channels-last (faster on CPU for plain
    #: convolution stacks; not for StyleGAN2's per-sample grouped convolutions)
    prefers_channels_last: bool = False

    def for_streaming(self) -> "LatentGenerator":
        """This generator prepared for per-frame inference (same maths, in place)."""
        if self.prefers_channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random latents from the prior (the ones calibration trains on)."""
        raise NotImplementedError

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, *latent_shape] -> image [B, 3, R, R] in [-1, 1]."""
        raise NotImplementedError

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.synthesize(latent)

    @staticmethod
    def apply_shift(latent: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Add a direction shift. For stacked codes [B, L, D] a shift [B, K, D] with K <= L touches
        only the first K layers (the paper shifts W+ layers 0..7); flat codes add directly."""
        if shift.shape == latent.shape:
            return latent + shift
        k = shift.shape[1]
        return torch.cat([latent[:, :k] + shift, latent[:, k:]], dim=1)
