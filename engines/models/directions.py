"""Direction matrix A: a normalised pose change dp [B, K] -> latent shift (paper Eq.: dw = A dp + b).

Two file formats load through `Directions.from_checkpoint`:
  * ours: safetensors with tensors `weight [O, K]`, `bias [O]`, `lo [K]`, `hi [K]` (the normalisation
    range of each parameter) and JSON metadata (zoo, parameter names, output shape, scale a);
  * the official StelaBou `.pt` (`A_matrix: {linear.weight [4096,15], linear.bias}`, `shift_scale`,
    `num_layers_shift`, `shift_dim` which their trainer forgets to write; default 512).
Normalisation maps each parameter's [lo, hi] linearly onto [-a, a] (a = shift_scale = 6): for angles
lo/hi = -/+scale (paper: 40/20/20 degrees), for expressions the range measured by calibration.stats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from engines.core.errors import UserError
from engines.core.weights_io import read_checkpoint

FORMAT = "facereenact-directions/1"


class Directions(nn.Module):
    def __init__(self, k: int, out_shape: tuple[int, ...], shift_scale: float = 6.0,
                 param_names: list[str] | None = None, zoo: str = "", lo=None, hi=None,
                 init_std: float = 0.03, meta: dict | None = None):
        super().__init__()
        self.k = k
        self.out_shape = tuple(out_shape)
        self.shift_scale = float(shift_scale)
        self.param_names = list(param_names) if param_names else [f"p{i}" for i in range(k)]
        if len(self.param_names) != k:
            raise ValueError(f"{len(self.param_names)} parameter names for {k} directions")
        self.zoo = zoo
        self.meta = dict(meta or {})
        self.linear = nn.Linear(k, math.prod(self.out_shape), bias=True)
        nn.init.normal_(self.linear.weight, 0.0, init_std)
        nn.init.normal_(self.linear.bias, 0.0, init_std)
        lo = torch.full((k,), -shift_scale) if lo is None else torch.as_tensor(lo, dtype=torch.float32)
        hi = torch.full((k,), shift_scale) if hi is None else torch.as_tensor(hi, dtype=torch.float32)
        self.register_buffer("lo", lo.float().clone())
        self.register_buffer("hi", hi.float().clone())

    # -- normalisation -------------------------------------------------------------------------
    def normalise(self, p: torch.Tensor) -> torch.Tensor:
        """Raw Net3D parameters [.., K] -> [-a, a] over each parameter's calibrated range."""
        a = self.shift_scale
        return (p - self.lo) / (self.hi - self.lo) * (2 * a) - a

    def denormalise(self, pn: torch.Tensor) -> torch.Tensor:
        a = self.shift_scale
        return (pn + a) / (2 * a) * (self.hi - self.lo) + self.lo

    # -- the map -------------------------------------------------------------------------------
    def forward(self, dp: torch.Tensor) -> torch.Tensor:
        """Normalised dp [B, K] -> shift [B, *out_shape] (bias included, as the paper's A)."""
        return self.linear(dp.reshape(-1, self.k)).view(-1, *self.out_shape)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: dict | None = None) -> None:
        from safetensors.torch import save_file
        meta = {"format": FORMAT, "zoo": self.zoo, "param_names": self.param_names,
                "out_shape": list(self.out_shape), "shift_scale": self.shift_scale,
                **self.meta, **(extra_meta or {})}
        tensors = {"weight": self.linear.weight.detach().contiguous(),
                   "bias": self.linear.bias.detach().contiguous(),
                   "lo": self.lo.contiguous(), "hi": self.hi.contiguous()}
        save_file(tensors, str(path), metadata={"json": json.dumps(meta)})

    @classmethod
    def from_checkpoint(cls, path: str | Path, expect_zoo: str | None = None,
                        expect_params: list[str] | None = None) -> "Directions":
        path = Path(path)
        if path.suffix == ".safetensors":
            d = cls._from_ours(path)
        else:
            d = cls._from_official(path)
        if expect_zoo is not None and d.zoo and d.zoo != expect_zoo:
            raise UserError(f"{path}: directions were trained for zoo '{d.zoo}', not '{expect_zoo}'")
        if expect_params is not None and d.param_names != list(expect_params):
            raise UserError(f"{path}: directions expect parameters {d.param_names}, "
                            f"this Net3D gives {list(expect_params)}")
        return d

    @classmethod
    def _from_ours(cls, path: Path) -> "Directions":
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("json", "{}"))
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise UserError(f"{path}: directions file is corrupt or not safetensors "
                            f"({type(e).__name__}: {str(e)[:120]})") from None
        if meta.get("format") != FORMAT:
            raise UserError(f"{path}: not a directions file (format {meta.get('format')!r}, expected {FORMAT!r})")
        missing = {"weight", "bias", "lo", "hi"} - set(t)
        if missing:
            raise UserError(f"{path}: directions file lacks tensors {sorted(missing)}")
        names, out_shape = meta["param_names"], tuple(meta["out_shape"])
        k, o = len(names), math.prod(out_shape)
        shapes = {"weight": (o, k), "bias": (o,), "lo": (k,), "hi": (k,)}
        for key, shape in shapes.items():
            if tuple(t[key].shape) != shape:
                raise UserError(f"{path}: tensor '{key}' has shape {tuple(t[key].shape)}, expected {shape} "
                                f"for {k} parameters and latent shift {out_shape}")
        rest = {k2: v for k2, v in meta.items()
                if k2 not in ("format", "zoo", "param_names", "out_shape", "shift_scale")}
        d = cls(k, out_shape, meta.get("shift_scale", 6.0), names, meta.get("zoo", ""),
                t["lo"], t["hi"], meta=rest)
        with torch.no_grad():
            d.linear.weight.copy_(t["weight"])
            d.linear.bias.copy_(t["bias"])
        return d.requires_grad_(False)

    @classmethod
    def _from_official(cls, path: Path) -> "Directions":
        ckpt = read_checkpoint(path, what="A matrix")
        if not isinstance(ckpt, dict) or "A_matrix" not in ckpt:
            raise UserError(f"{path}: not an official A-matrix checkpoint (expected keys 'A_matrix', "
                            "'learned_directions', 'shift_scale', 'num_layers_shift', optional 'shift_dim')")
        sd = ckpt["A_matrix"]
        if not isinstance(sd, dict):
            raise UserError(f"{path}: 'A_matrix' must be a state dict with 'linear.weight' and 'linear.bias'")
        w, b = sd.get("linear.weight"), sd.get("linear.bias")
        if w is None or b is None:
            raise UserError(f"{path}: 'A_matrix' must hold 'linear.weight' and 'linear.bias'")
        k = int(ckpt.get("learned_directions", w.shape[1]))
        layers = int(ckpt.get("num_layers_shift", 8))
        dim = int(ckpt.get("shift_dim", 512))  # their trainer omits it; run_inference's default is 512
        w_plus = bool(ckpt.get("w_plus", True))
        out_shape = (layers, dim) if w_plus else (dim,)
        if tuple(w.shape) != (math.prod(out_shape), k) or tuple(b.shape) != (math.prod(out_shape),):
            raise UserError(f"{path}: linear.weight {tuple(w.shape)} / bias {tuple(b.shape)} do not match "
                            f"{k} directions x {out_shape} shift")
        from engines.models.deca import P_NAMES  # the paper's 15 parameters, in order
        names = P_NAMES if k == len(P_NAMES) else None
        d = cls(k, out_shape, float(ckpt.get("shift_scale", 6.0)), names, "vox256")
        with torch.no_grad():
            d.linear.weight.copy_(w.float())
            d.linear.bias.copy_(b.float())
        return d.requires_grad_(False)
