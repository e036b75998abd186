"""Avatar packs: everything one portrait needs at stream time, in one safetensors file.

Tensors: `latent` (the inverted code), `tuned.<param>` (the pivotal-tuned generator weights that
differ from the zoo's, only the tuned layers), `crop` (the aligned photo, uint8 HWC), `display`
(the photo around it, meta `display_scale` times wider, 256 px: the published frame's surroundings,
streamer.avatar.framing) and, with `--tune-directions`, `directions.weight` / `directions.bias` (A tuned to
this avatar; calibration.avatar_directions). Metadata (JSON): zoo, source p (the avatar's own pose),
crop box, photo sha256, enrollment settings and quality figures, software versions. Loading is a header read plus a few MB of tensors: well under a second.

A pack is checked when it loads (finite float tensors, uint8 RGB crops, a numeric finite pose `p`)
and against the zoo that will run it (`check`: latent, pose, crop and tuned shapes), so a damaged or
foreign pack is refused with one line naming the file, never streamed as black frames.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engines.core.errors import UserError

FORMAT = "facereenact-avatar/1"


@dataclass
class AvatarPack:
    zoo: str
    latent: torch.Tensor                 # [1, *latent_shape]
    tuned: dict[str, torch.Tensor]       # generator parameter name -> tuned value
    crop: np.ndarray                     # aligned photo at the generator's resolution, uint8 HWC
    display: np.ndarray                  # the photo around the crop (display_scale x wider), uint8 HWC
    meta: dict = field(default_factory=dict)
    directions: dict[str, torch.Tensor] | None = None   # {"weight", "bias"} of A tuned to this avatar
    path: Path | None = None             # the file it was loaded from (for messages)

    @property
    def p(self) -> np.ndarray:
        return np.asarray(self.meta["p"], dtype=np.float64)

    @property
    def display_scale(self) -> float:
        """How many generator squares `display` spans (1: the same square, packs from before)."""
        return float(self.meta.get("display_scale", 1.0))

    def generator(self, base):
        """A copy of the zoo generator with this avatar's tuned weights (the zoo's stays untouched)."""
        g = copy.deepcopy(base)
        if self.tuned:
            sd = g.state_dict()
            unknown = set(self.tuned) - set(sd)
            if unknown:
                raise UserError(f"avatar pack tunes parameters this generator lacks: {sorted(unknown)[:3]}")
            for k, v in self.tuned.items():
                if sd[k].shape != v.shape:
                    raise UserError(f"avatar pack: '{k}' has shape {tuple(v.shape)}, generator expects "
                                    f"{tuple(sd[k].shape)} (enrolled for another zoo or weights?)")
            g.load_state_dict({**sd, **{k: v.to(sd[k].dtype) for k, v in self.tuned.items()}})
        return g.eval().requires_grad_(False)

    def directions_for(self, base):
        """The zoo's A, or a copy with this avatar's tuned weight and bias (same normalisation)."""
        if not self.directions:
            return base
        want = {"weight": tuple(base.linear.weight.shape), "bias": tuple(base.linear.bias.shape)}
        for k, shape in want.items():
            v = self.directions.get(k)
            if v is None or tuple(v.shape) != shape:
                got = None if v is None else tuple(v.shape)
                raise UserError(f"avatar pack: tuned directions '{k}' has shape {got}, the zoo's A {shape} "
                                f"(enrolled for another A? enroll the photo again)")
        d = copy.deepcopy(base)
        with torch.no_grad():
            d.linear.weight.copy_(self.directions["weight"])
            d.linear.bias.copy_(self.directions["bias"])
        return d.requires_grad_(False)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file
        tensors = {"latent": self.latent.detach().float().contiguous(),
                   "crop": torch.from_numpy(np.array(self.crop)),
                   "display": torch.from_numpy(np.array(self.display))}
        tensors.update({f"tuned.{k}": v.detach().contiguous() for k, v in self.tuned.items()})
        tensors.update({f"directions.{k}": v.detach().float().contiguous() for k, v in (self.directions or {}).items()})
        meta = {"format": FORMAT, "zoo": self.zoo, **self.meta}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata={"json": json.dumps(meta)})
            tmp.replace(path)  # never leave a half-written pack where the cache looks
        except BaseException:
            if tmp.is_file():
                tmp.unlink()
            raise

    def check(self, zoo) -> None:
        """UserError unless this pack fits `zoo` (engines.method.zoo.Zoo): its zoo name, latent, pose, crop,
        tuned-weight and tuned-A shapes. Cheap (no model runs)."""
        name = self.path or "avatar pack"
        if self.zoo != zoo.name:
            raise UserError(f"{name}: avatar was enrolled for zoo '{self.zoo}', not '{zoo.name}'")
        G = zoo.generator
        want = (1, *G.latent_shape)
        if tuple(self.latent.shape) != want:
            raise UserError(f"{name}: avatar pack latent has shape {tuple(self.latent.shape)}, zoo '{zoo.name}' "
                            f"expects {want} (damaged, or made by other software?)")
        if len(self.meta["p"]) != len(zoo.param_names):
            raise UserError(f"{name}: avatar pack pose 'p' has {len(self.meta['p'])} values, zoo '{zoo.name}' "
                            f"expects {len(zoo.param_names)}")
        if self.crop.shape[:2] != (G.resolution, G.resolution):
            raise UserError(f"{name}: avatar pack crop is {self.crop.shape[1]}x{self.crop.shape[0]}, zoo "
                            f"'{zoo.name}' renders {G.resolution}x{G.resolution}")
        if self.tuned:
            shapes = {k: tuple(v.shape) for k, v in G.state_dict().items()}
            unknown = sorted(set(self.tuned) - set(shapes))
            if unknown:
                raise UserError(f"{name}: avatar pack tunes parameters this generator lacks: {unknown[:3]}")
            for k, v in self.tuned.items():
                if tuple(v.shape) != shapes[k]:
                    raise UserError(f"{name}: avatar pack: '{k}' has shape {tuple(v.shape)}, generator expects "
                                    f"{shapes[k]} (enrolled for another zoo or weights?)")
        if self.directions:
            self.directions_for(zoo.directions())

    @classmethod
    def load(cls, path: str | Path) -> "AvatarPack":
        from safetensors import safe_open
        path = Path(path)
        if not path.is_file():
            raise UserError(f"avatar pack not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("json", "{}"))
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise UserError(f"{path}: not a readable avatar pack ({type(e).__name__}: {str(e)[:100]})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise UserError(f"{path}: not an avatar pack (format {str(got)[:40]!r}, expected {FORMAT!r})")
        _check_contents(path, t, meta)
        tuned = {k[len("tuned."):]: v for k, v in t.items() if k.startswith("tuned.")}
        directions = {k[len("directions."):]: v for k, v in t.items() if k.startswith("directions.")} or None
        zoo = meta.pop("zoo", "")
        meta.pop("format")
        return cls(str(zoo), t["latent"], tuned, t["crop"].numpy(), t["display"].numpy(), meta, directions, path)


def _check_contents(path: Path, t: dict, meta: dict) -> None:
    """What every pack must hold, whatever its zoo: UserError naming the file and the first problem."""
    for k in ("latent", "crop", "display"):
        if k not in t:
            raise UserError(f"{path}: avatar pack lacks '{k}'")
    for k, v in t.items():
        if k in ("crop", "display"):
            if v.dtype != torch.uint8 or v.ndim != 3 or v.shape[2] != 3 or min(v.shape[:2]) < 8:
                raise UserError(f"{path}: avatar pack '{k}' is not an RGB image "
                                f"({str(v.dtype).replace('torch.', '')} {tuple(v.shape)}); damaged pack?")
        elif not v.is_floating_point():
            raise UserError(f"{path}: avatar pack tensor '{k}' is {str(v.dtype).replace('torch.', '')}, "
                            f"expected floats; damaged pack?")
        elif not bool(torch.isfinite(v).all()):
            raise UserError(f"{path}: avatar pack tensor '{k}' holds NaN or infinite values (damaged pack: "
                            f"enroll the photo again)")
    if t["latent"].ndim < 2 or t["latent"].shape[0] != 1:
        raise UserError(f"{path}: avatar pack latent has shape {tuple(t['latent'].shape)}, expected [1, ...]")
    p = meta.get("p")
    if not isinstance(p, list) or not p or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p):
        raise UserError(f"{path}: avatar pack pose 'p' is {str(p)[:60]}, expected a list of finite numbers")
