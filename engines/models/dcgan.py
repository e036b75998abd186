"""The default zoo's generator: the 64x64 DCGAN shipped in the `gan-face-generate` wheel.

Architecture (REFERENCE §4): five ConvTranspose2d layers 100->512->256->128->64->3 (kernel 4, strides
1,2,2,2,2, paddings 0,1,1,1,1, no bias), BatchNorm+ReLU between them, tanh at the end. BatchNorm runs
in eval mode with the stored running statistics, so an image depends on its own latent only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.core.errors import UserError
from engines.core.modelfiles import model_path
from engines.core.weights_io import read_checkpoint
from engines.models.generator import LatentGenerator

CHANNELS = (100, 512, 256, 128, 64, 3)


class DCGAN(LatentGenerator):
    latent_shape = (100,)
    resolution = 64
    # one frame on one core: 4.5 -> 3.5 ms (2-vCPU AMD EPYC; mkldnn's transposed convolution reads
    # its 12.6 MB of weights better in this layout)
    prefers_channels_last = True

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            first = i == 0
            layers.append(nn.ConvTranspose2d(CHANNELS[i], CHANNELS[i + 1], 4, 1 if first else 2,
                                             0 if first else 1, bias=False))
            if i < 4:
                layers += [nn.BatchNorm2d(CHANNELS[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Tanh())
        # the wheel's state dict names the stack `main`
        self.main = nn.Sequential(*layers)
        self.eval()

    def train(self, mode: bool = True):
        # Always eval: batch statistics would couple images in a batch and change with batch size.
        return super().train(False)

    def sample_latents(self, n, generator=None):
        return torch.randn(n, 100, generator=generator)

    def synthesize(self, latent):
        return self.main(latent.view(latent.shape[0], 100, 1, 1))

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None) -> "DCGAN":
        path = Path(path) if path else model_path("dcgan")
        ckpt = read_checkpoint(path, what="DCGAN generator")
        sd = ckpt.get("netG_state_dict") if isinstance(ckpt, dict) else None
        if sd is None:
            raise UserError(f"{path}: not a gan-face-generate checkpoint (expected key 'netG_state_dict')")
        model = cls()
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise UserError(f"{path}: DCGAN weights do not fit the 100->512->256->128->64->3 layout ({first})") from None
        return model.requires_grad_(False)
