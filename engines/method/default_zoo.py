"""The default zoo: the 64x64 DCGAN (`gan-face-generate`), MediaPipe as Net3D, the A trained here.

Its recipe: pivotal tuning of the transposed convs that make the 8 to 64 px maps (+ their BatchNorms),
cosine-decayed lr, on the photo and its pose targets with pixel losses only: identity or landmark
losses through a network left adversarial fringes (issue 14). The crop sits 0.04 (not the generator's
own 0.11) of its side above the face's centre: tuned on targets, G takes the photo's framing, and the
room below lets a dropped chin stay in frame (astronaut, wide-open mouths: a face in 100% of frames,
was 93%). Enrollment runs on one thread (engines.method.recipes: one count per zoo).
"""
from __future__ import annotations

from pathlib import Path

from engines.method.pose import PARAM_NAMES
from engines.method.recipes import TargetRecipe, Tuning, ZooRecipe
from engines.method.zoo import DATA, Zoo
from engines.models.dcgan import DCGAN

RECIPE = ZooRecipe(
    Tuning(("main.3.", "main.4.", "main.6.", "main.7.", "main.9.", "main.10.", "main.12."),
           600, 2e-3, targets=TargetRecipe(), edges=2.0, crop_shift_up=0.04),
    inversion_steps=150, enroll_threads=1)


def default_directions_path() -> Path:
    return DATA / "default_directions.safetensors"


def load_default(directions: str | Path | None = None) -> Zoo:
    return Zoo("default", DCGAN.from_checkpoint(), list(PARAM_NAMES),
               Path(directions) if directions else default_directions_path(), RECIPE)
