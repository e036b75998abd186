"""A zoo is the set of models one reenactment runs on: generator, Net3D reader and direction matrix.

Both zoos share every code path; this module is the one place that knows which files make up each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

DATA = Path(__file__).resolve().parent.parent / "calibration" / "data"
ZOOS = ("default", "vox256")


@dataclass
class Zoo:
    name: str
    generator: object                      # engines.generator.LatentGenerator
    param_names: list[str]
    directions_path: Path | None           # committed / user-given A
    weights_dir: Path | None = None
    extra: dict = field(default_factory=dict)   # zoo-specific hooks; "device_modules": per-frame nets

    def pose_reader(self):
        """A fresh per-session Net3D reader of driving frames; `.read(rgb, t_ms)` -> reading | None,
        `.close()`. Not thread-safe: one per session. MediaPipe runs in image mode: its video mode
        smooths landmarks inside the graph, a frame or two behind the face (jawOpen followed speech at
        r 0.80 instead of 0.96 on the selfie clip; docs/reenactment.md), and the reenactor smooths anyway."""
        if "pose_reader" in self.extra:
            return self.extra["pose_reader"]()
        from .net3d import MediaPipeNet3D
        return MediaPipeNet3D("image")

    def compose_latent(self, latent, shift):
        """Source latent + direction shift -> the latent G renders (vox256: the official truncation)."""
        if "compose_latent" in self.extra:
            return self.extra["compose_latent"](latent, shift)
        return latent if shift is None else self.generator.apply_shift(latent, shift)

    def encoder(self):
        """The zoo's inversion encoder (image [B,3,R,R] in [-1,1] -> latent), or None."""
        return self.extra["encoder"]() if "encoder" in self.extra else None

    def directions(self):
        from .directions import Directions
        if self.directions_path is None or not Path(self.directions_path).is_file():
            raise UserError(f"no direction matrix for zoo '{self.name}' at {self.directions_path}; "
                            f"train one with: python -m calibration.train --zoo {self.name}")
        return Directions.from_checkpoint(self.directions_path, expect_zoo=self.name,
                                          expect_params=self.param_names)


def default_directions_path() -> Path:
    return DATA / "default_directions.safetensors"


def load_zoo(name: str = "default", weights_dir: str | Path | None = None,
             directions: str | Path | None = None, net3d: str | None = None) -> Zoo:
    if name == "default":
        from .dcgan import DCGAN
        from .pose import PARAM_NAMES
        return Zoo("default", DCGAN.from_checkpoint(), list(PARAM_NAMES),
                   Path(directions) if directions else default_directions_path())
    if name == "vox256":
        from .vox256 import load_vox256  # bring-your-own weights
        return load_vox256(weights_dir, directions, net3d)
    raise UserError(f"unknown zoo '{name}' (choose from {', '.join(ZOOS)})")
