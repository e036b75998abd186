"""The types of a zoo's recipe: what a zoo needs beyond its models, as typed data. Each zoo's own
recipe sits beside it (engines.method.default_zoo, engines.method.vox256): how enrollment tunes the
generator (layers, steps, pose targets), how long it inverts and on how many threads. Enrollment, the
generator stage's avatar bank and the benchmarks all read the tuned layers from there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetRecipe:
    samples: int = 384                 # direction requests in the bank
    levels: int = 6                    # single-parameter requests per parameter, over its range
    active: float = 0.6                # chance an expression moves in a combined request
    paired: float = 0.75               # chance the right of a left/right pair copies the left
    angle_span: tuple[float, float, float] = (30.0, 15.0, 10.0)   # yaw, pitch, roll either way, degrees
    # largest scaling of an expression's displacement (1: none). 2 made MediaPipe read the targets' full
    # range, but a doubled jaw drop carries the chin past the crop's edge, which the warp holds still: a
    # toothy smile's lower face folded and her tuned mouth read jawOpen 0.04-0.10 whatever was asked
    # (78-pair table: 75 -> 77 of 78 pass at 1; wide openings a little smaller; docs/motion_reach.md)
    gain_max: float = 1.0
    angle_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)   # yaw, pitch, roll turn scaling: more folds
    # the face in a turn and costs the mouth (1.5/1.4/1: astronaut widemouth jawOpen r 0.87 -> 0.35)
    spacing: float = 1.6               # least distance between control points, generator pixels
    mouth_weight: float = 5.0          # loss weight of the mouth and the eyes (where faces move most)
    eye_weight: float = 2.0
    seed: int = 3

    def request_sd(self, directions) -> list[float]:
        """[K] standard deviation of the combined requests in the bank, per parameter, in normalised
        units: where an avatar's generator is tuned (angles: a fifth of twice `angle_span`; expressions:
        a third of their range; streamer.avatar.pose_targets.request_bank draws them)."""
        a = directions.shift_scale
        span = (directions.hi - directions.lo).tolist()
        return [2 * s / 5 * 2 * a / span[i] for i, s in enumerate(self.angle_span)] + [2 * a / 3] * (directions.k - 3)


@dataclass(frozen=True)
class Tuning:
    layers: tuple[str, ...]   # parameter-name prefixes that pivotal tuning may change
    steps: int
    lr: float
    targets: TargetRecipe | None = None   # also tune on pose targets (None: the photo only, the official way)
    batch: int = 6            # pose targets per step, beside the photo
    edges: float = 0.0        # weight of the L1 loss on image gradients (keeps the warped photo's edges sharp)
    crop_shift_up: float | None = None   # the crop's centre shift (None: as measured on the zoo's faces)
    # > 0: each tuned conv weight learns a rank-r delta U V (engines.accel.lowrank), not a full one. Out of
    # repr, so adding it did not change recipe_key (cached full-tuned packs stay valid); recipe_key adds it when set
    rank: int = field(default=0, repr=False)


# Enrollment is an optimisation: with another torch thread count its float sums round differently and
# 270 steps later the pack differs (astronaut: latent max |diff| 0.66, 2 vs 1 threads; Pexels yaw
# correlation 0.77 vs 0.81). A fixed count per zoo makes a photo give the same avatar whichever tool
# enrolls it on this machine (they share one cache): one thread for the small default zoo (~40 s),
# every core for StyleGAN2-256, where one thread would take many minutes.
@dataclass(frozen=True)
class ZooRecipe:
    tuning: Tuning
    inversion_steps: int
    enroll_threads: int | None = None   # None: every core

    def threads(self) -> int:
        return self.enroll_threads or os.cpu_count() or 1
