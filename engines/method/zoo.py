"""A zoo is the set of models one reenactment runs on: generator, Net3D reader and direction matrix,
with its recipe (engines.method.recipes). Both zoos share every code path: each zoo's module
(engines.method.default_zoo, engines.method.vox256) fills this one typed record, and
engines.method.zoos loads one by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engines.core.errors import UserError
from engines.method.net3d import MediaPipeNet3D
from engines.method.pose import before_image_turn
from engines.method.recipes import ZooRecipe
from engines.models.directions import Directions

DATA = Path(__file__).resolve().parent / "data"   # the default zoo's committed A, baseline, shape model


@dataclass
class Zoo:
    name: str
    generator: object                      # engines.models.generator.LatentGenerator
    param_names: list[str]
    directions_path: Path | None           # committed / user-given A
    recipe: ZooRecipe
    weights_dir: Path | None = None
    # capabilities (None: the shared default)
    reader_factory: Callable[[], object] | None = None    # per-session Net3D (None: MediaPipe)
    latent_composer: Callable | None = None                # (latent, shift) -> latent (None: apply_shift)
    encoder_factory: Callable[[], object] | None = None    # inversion encoder (None: optimisation only)
    perceptual_factory: Callable[[], object] | None = None  # pivotal tuning's perceptual loss
    device_modules: tuple = ()                             # per-frame networks that go to --device
    # (angles [3] degrees, turn) -> the angles a head must show so that its image, turned `turn` degrees in
    # its plane, reads as them (None: Net3D is MediaPipe, whose Euler order puts roll innermost)
    angles_before_turn: Callable | None = None

    @property
    def reads_own_output(self) -> bool:
        """Whether Net3D is MediaPipe, which also reads generated faces on calibration's view (not
        vox256 with DECA): the per-avatar correction, the feedback and enrollment's own pose need it."""
        return self.reader_factory is None

    def pose_reader(self):
        """A fresh per-session Net3D reader of driving frames; `.read(rgb, t_ms)` -> reading | None,
        `.close()`. Not thread-safe: one per session. MediaPipe runs in image mode: its video mode
        smooths landmarks inside the graph, a frame or two behind the face (jawOpen followed speech at
        r 0.80 instead of 0.96 on the selfie clip; docs/reenactment.md), and the reenactor smooths anyway."""
        if self.reader_factory is not None:
            return self.reader_factory()
        return MediaPipeNet3D("image")

    def before_image_turn(self, angles, turn: float) -> np.ndarray:
        """The (yaw, pitch, roll) G must show so that Net3D reads `angles` on its render turned `turn`
        degrees counter-clockwise in the image's plane (how the driver's roll is shown)."""
        if self.angles_before_turn is not None:
            return self.angles_before_turn(angles, turn)
        return before_image_turn(angles, turn)

    def compose_latent(self, latent, shift):
        """Source latent + direction shift -> the latent G renders (vox256: the official truncation)."""
        if self.latent_composer is not None:
            return self.latent_composer(latent, shift)
        return latent if shift is None else self.generator.apply_shift(latent, shift)

    def encoder(self):
        """The zoo's inversion encoder (image [B,3,R,R] in [-1,1] -> latent), or None."""
        return self.encoder_factory() if self.encoder_factory is not None else None

    def directions(self) -> Directions:
        if self.directions_path is None or not Path(self.directions_path).is_file():
            raise UserError(f"no direction matrix for zoo '{self.name}' at {self.directions_path}; "
                            f"train one with: python -m calibration.train --zoo {self.name}")
        return Directions.from_checkpoint(self.directions_path, expect_zoo=self.name,
                                          expect_params=self.param_names)
