"""LPIPS v0.1 with AlexNet features (the paper's L_per), loading user-supplied weight files.

Distance (Zhang et al. 2018): inputs in [-1,1] are shifted/scaled per channel (shift [-.030,-.088,-.188],
scale [.458,.448,.450]); the five AlexNet ReLU outputs (after conv1..conv5) are unit-normalised over
channels (x / (||x|| + 1e-10)); the squared difference is weighted per channel by a 1x1 conv (no bias),
averaged over space and summed over the five layers.

Accepted files (`LPIPS.from_checkpoint(lin_path, alexnet_path=None)`):
  * `alex.pth` from the lpips package (lpips/weights/v0.1/alex.pth): linN.model.1.weight [1, C, 1, 1]
    for C = 64, 192, 384, 256, 256, together with torchvision's AlexNet ImageNet weights
    (`alexnet-owt-7be5be79.pth`: features.{0,3,6,8,10}.{weight,bias}; classifier.* ignored);
  * or one full LPIPS module state dict: net.slice{1..5}.{0,3,6,8,10}.*, lin0-4.model.1.weight
    (scaling_layer.* is optional and must hold the constants above).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.core.errors import UserError
from engines.core.statedict import assign_state_dict, build_on_meta
from engines.core.weights_io import read_checkpoint, strip_prefix

CHANNELS = (64, 192, 384, 256, 256)
CONV_IDX = (0, 3, 6, 8, 10)  # torchvision alexnet.features indices of the five convs
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
LAYOUT = ("LPIPS alex: lpips 'alex.pth' (lin0-4.model.1.weight [1,C,1,1], C = 64,192,384,256,256) plus "
          "torchvision AlexNet weights (features.0/3/6/8/10.weight/bias), or one full LPIPS state dict "
          "(net.slice1-5.*, lin0-4.model.1.weight)")


class _Lin(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(ch, 1, 1, bias=False))


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        r = lambda: nn.ReLU(inplace=False)  # noqa: E731
        mp = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), r(), mp(), nn.Conv2d(64, 192, 5, padding=2), r(), mp(),
            nn.Conv2d(192, 384, 3, padding=1), r(), nn.Conv2d(384, 256, 3, padding=1), r(),
            nn.Conv2d(256, 256, 3, padding=1), r())
        for i, ch in enumerate(CHANNELS):
            setattr(self, f"lin{i}", _Lin(ch))

    def train(self, mode: bool = True):
        return super().train(False)  # dropout off: it is a metric/loss network

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        shift = torch.tensor(SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        scale = torch.tensor(SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        h = (x - shift) / scale
        outs = []
        for i, m in enumerate(self.features):
            h = m(h)
            if i - 1 in CONV_IDX:  # the ReLU right after each conv
                outs.append(h)
        return outs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> LPIPS distance [B]."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two equal-shape [B, 3, H, W] batches, got {tuple(x.shape)} / {tuple(y.shape)}")
        total = 0
        for i, (fx, fy) in enumerate(zip(self.layer_features(x), self.layer_features(y))):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{i}").model((nx - ny).pow(2))
            total = total + d.mean(dim=(2, 3))
        return total[:, 0]

    @classmethod
    def from_checkpoint(cls, lin_path: str | Path, alexnet_path: str | Path | None = None) -> "LPIPS":
        lin_path = Path(lin_path)
        lin = _state_dict(lin_path, "LPIPS linear heads")
        sd = {}
        if any(k.startswith("net.slice") for k in lin):
            for k, v in lin.items():
                if k.startswith("net.slice"):
                    sd["features." + k.split(".", 2)[2]] = v  # net.sliceK.N.p -> features.N.p
                elif k.startswith("scaling_layer."):
                    _check_scaling(lin_path, k, v)
                else:
                    sd[k] = v
            src = lin_path
        else:
            if alexnet_path is None:
                raise UserError(f"{lin_path}: holds only the LPIPS linear heads; also give the torchvision "
                                f"AlexNet weights (alexnet-owt-7be5be79.pth); {LAYOUT}")
            alexnet_path = Path(alexnet_path)
            alex = _state_dict(alexnet_path, "AlexNet weights")
            sd.update({k: v for k, v in alex.items() if k.startswith("features.")})
            sd.update(lin)
            src = f"{lin_path} + {alexnet_path}"
        model = build_on_meta(cls)
        assign_state_dict(model, sd, path=src, what="LPIPS weights", layout=LAYOUT)
        return model.eval().requires_grad_(False)


def _state_dict(path: Path, what: str) -> dict:
    sd = read_checkpoint(path, what)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: {what} should be a state dict; {LAYOUT}")
    return strip_prefix(sd)


def _check_scaling(path, key, v):
    ref = SHIFT if key.endswith("shift") else SCALE
    if not isinstance(v, torch.Tensor) or v.numel() != 3 or not torch.allclose(
            v.reshape(3).float(), torch.tensor(ref), atol=1e-6):
        raise UserError(f"{path}: {key} is not the LPIPS v0.1 constant {ref}; {LAYOUT}")
