"""e4e encoder (Encoder4Editing, IR-SE-50): image [B,3,256,256] in [-1,1] -> W+ codes [B,14,512].

Two checkpoint layouts load through `E4E.from_checkpoint`:
  * the paper's VoxCeleb encoder (`e4e-voxceleb.pt`): {'e': state dict}; codes are used as they are;
  * the official omertov e4e: {'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'};
    `latent_avg` ([n_styles, 512] or [512]) is added to the output, as their loader does.
Head (fixture pitfalls): w = styles[0](c3) on every row; row i (1..n-1) adds styles[i](features) where
features = c3 for i < 3, p2 = up(c3 -> c2) + latlayer1(c2) from i = 3, p1 = up(p2 -> c1) + latlayer2(c1)
from i = 7 (bilinear, align_corners=True). c1/c2/c3 are taken after body units 6, 20, 23.
GradualStyleBlock(s): log2(s) conv3x3 stride 2 + LeakyReLU(0.01), flatten 512, EqualLinear(512, 512).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.core.errors import UserError
from engines.core.statedict import assign_state_dict, build_on_meta
from engines.core.weights_io import read_checkpoint, require_dict, strip_prefix
from engines.models.irse import IRSEBackbone
from engines.models.stylegan2_ops import EqualLinear

LAYOUT = ("e4e: {'e': Encoder4Editing(50,'ir_se') state dict} (paper's VoxCeleb encoder) or "
          "{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'} (official e4e)")
TAPS = (6, 20, 23)
COARSE, MIDDLE = 3, 7


class GradualStyleBlock(nn.Module):
    def __init__(self, channels: int, spatial: int):
        super().__init__()
        n = int(math.log2(spatial))
        layers: list[nn.Module] = []
        for _ in range(n):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)
        self.channels = channels

    def forward(self, x):
        return self.linear(self.convs(x).reshape(-1, self.channels))


class E4E(IRSEBackbone):
    def __init__(self, n_styles: int = 14):
        super().__init__(50)
        self.n_styles = n_styles
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 16 if i < COARSE else 32 if i < MIDDLE else 64) for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)
        self.register_buffer("latent_avg", None, persistent=False)
        #: number of delta rows applied (e4e's progressive stage); n_styles - 1 = inference (all)
        self.stage = n_styles - 1

    @staticmethod
    def _upsample_add(x, y):
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def forward(self, img: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"e4e expects images [B, 3, H, W] in [-1, 1], got {tuple(img.shape)}")
        x = self.input_layer(img)
        feats = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in TAPS:
                feats[i] = x
        c1, c2, c3 = (feats[t] for t in TAPS)
        w0 = self.styles[0](c3)
        rows = [w0]
        features, p2 = c3, None
        for i in range(1, self.n_styles):
            if i > self.stage:
                rows.append(w0)
                continue
            if i == COARSE:
                p2 = self._upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE:
                features = self._upsample_add(p2, self.latlayer2(c1))
            rows.append(w0 + self.styles[i](features))
        w = torch.stack(rows, dim=1)
        if trace is not None:
            trace.update(c1_body6=c1, c2_body20=c2, c3_body23=c3, w0_styles0=w0)
        if self.latent_avg is not None:
            w = w + self.latent_avg.to(w)
        return w

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "E4E":
        path = Path(path)
        ckpt = require_dict(read_checkpoint(path, "e4e encoder"), path, "e4e encoder", LAYOUT)
        latent_avg = None
        if "e" in ckpt:
            sd = ckpt["e"]
        elif "state_dict" in ckpt:
            full = ckpt["state_dict"]
            if not isinstance(full, dict):
                raise UserError(f"{path}: 'state_dict' is not a dict; expected {LAYOUT}")
            sd = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
            if not sd:
                raise UserError(f"{path}: 'state_dict' has no 'encoder.*' keys; expected {LAYOUT}")
            latent_avg = ckpt.get("latent_avg")
        elif "g_ema" in ckpt:
            raise UserError(f"{path}: this is a StyleGAN2 generator checkpoint, not an e4e encoder; expected {LAYOUT}")
        else:
            raise UserError(f"{path}: neither 'e' nor 'state_dict' found; expected {LAYOUT}")
        if not isinstance(sd, dict):
            raise UserError(f"{path}: encoder weights are not a state dict; expected {LAYOUT}")
        sd = strip_prefix(sd)
        n_styles = len({k.split(".")[1] for k in sd if k.startswith("styles.")})
        if n_styles < 2:
            raise UserError(f"{path}: found {n_styles} style heads (styles.N.*), expected e.g. 14 for 256 px; {LAYOUT}")
        model = build_on_meta(lambda: cls(n_styles))
        assign_state_dict(model, sd, path=path, what="e4e encoder", layout=LAYOUT)
        if latent_avg is not None:
            la = torch.as_tensor(latent_avg).float()
            if tuple(la.shape) not in ((n_styles, 512), (1, n_styles, 512), (512,), (1, 512)):
                raise UserError(f"{path}: latent_avg has shape {tuple(la.shape)}, expected [{n_styles}, 512] or [512]")
            model.latent_avg = la.reshape(-1, 512) if la.numel() != 512 else la.reshape(512)
        return model.eval().requires_grad_(False)
