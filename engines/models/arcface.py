"""ArcFace IR-SE-50 face embedding (the paper's L_id network; TreB1eN/InsightFace_Pytorch weights).

Expected file: `model_ir_se50.pth`, a plain state dict of Backbone(50, drop_ratio=0.6, mode='ir_se'):
input_layer.* and body.* (see engines/models/irse.py), and output_layer.{0: BatchNorm2d(512), 3: Linear(25088,
512), 4: BatchNorm1d(512)} (1: Dropout, 2: Flatten have no weights). Input: aligned faces
[B,3,112,112] RGB in [-1,1]; output: L2-normalised [B,512] embeddings. For 256 px StyleGAN crops, pSp/e4e
take x[:, :, 35:223, 32:220] and average-pool it to 112 (`embed_256`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.core.errors import UserError
from engines.core.statedict import assign_state_dict, build_on_meta
from engines.core.weights_io import read_checkpoint, strip_prefix
from engines.models.irse import IRSEBackbone

LAYOUT = ("ArcFace IR-SE-50 (model_ir_se50.pth): state dict input_layer.*, body.0-23.*, output_layer.0 "
          "BatchNorm2d(512), output_layer.3 Linear(25088, 512), output_layer.4 BatchNorm1d(512)")


class ArcFace(IRSEBackbone):
    def __init__(self, num_layers: int = 50, drop_ratio: float = 0.6):
        super().__init__(num_layers)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or tuple(img.shape[1:]) != (3, 112, 112):
            raise ValueError(f"ArcFace expects aligned faces [B, 3, 112, 112] in [-1, 1], got {tuple(img.shape)}")
        x = self.output_layer(self.body(self.input_layer(img)))
        return F.normalize(x, dim=1)

    def embed_256(self, img: torch.Tensor) -> torch.Tensor:
        """256x256 face crops -> embeddings, with the pSp/e4e ID-loss crop and pooling."""
        return self(F.adaptive_avg_pool2d(img[:, :, 35:223, 32:220], (112, 112)))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ArcFace":
        path = Path(path)
        sd = read_checkpoint(path, "ArcFace IR-SE-50")
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise UserError(f"{path}: expected a state dict; {LAYOUT}")
        sd = strip_prefix(sd, ("module.", "facenet."))
        model = build_on_meta(cls)
        assign_state_dict(model, sd, path=path, what="ArcFace weights", layout=LAYOUT)
        return model.eval().requires_grad_(False)
