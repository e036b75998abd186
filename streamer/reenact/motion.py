"""One session's motion state: driving pose p -> the normalised change dp the avatar is asked for.

Motion is relative by default: dp = p_t - p_ref with p_ref the driver's neutral reference (first frame
with a face; then the head angles follow where the driver's head usually is (usual_pose), and each
blendshape the least the driver has shown; `reset` re-takes it), applied on top of the avatar's own
pose, so the avatar starts from its own expression and a driver whose neutral face is not the
avatar's still drives it correctly (the exceptions: an open mouth starts shut, so that
it can close with the driver's; a pose past the range calibration saw starts at the range's edge).
A driver who opens wider than the avatar's jaw can show has the jaw's change scaled down, so that
their recent wide openings reach the top of its curve (open_to). The target is clamped to that range
(plus a tenth either way). The driver's roll is not asked of G: G holds the photo's roll and `roll`
(degrees) turns the published image (ROLL_READ); G shows the yaw and pitch that the turned image must
read as (a turn in the image's plane moves one into the other). Absolute mode is the paper's formula
dp = p_driver - p_avatar. Frames with no face hold the last pose for `hold_s`, then ease back to the
avatar's neutral pose.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engines.method.correction import mouth_is_open
from engines.method.pose import ANGLES, before_image_turn
from engines.models.facelandmarker import BLENDSHAPE_NAMES
from streamer.reenact.smoothing import OneEuro

EASE_FRAME_S = 1 / 30   # easing runs per frame without a face, at a nominal 30 fps
# Relative motion keeps the photo's expression as the rest, so a photo with an open mouth (a surprised
# face) could only open further, where it saturates, and never close with the driver's: jawOpen r
# 0.58-0.60 on two wide-mouth pairs. Its jaw is driven from a shut mouth instead: the lowest reading
# its jaw can show (shut_at), at least a closed mouth's typical reading. Below that every request would
# clamp to one step, and a driver's small openings vanish (from 0.05 rather than the 0.16 that
# surprised face reaches: jawOpen r 0.61-0.62 on the wide-mouth bundled clip instead of 0.72-0.84).
MOUTH_SHUT = 0.05
# The driver's roll turns the published image (exact for an in-plane turn; G's roll direction moves a
# 64-px face a few degrees at most, and a photo tilted past the calibrated range not at all), up to
# this far from upright: MediaPipe reads an open mouth on a render turned further as shut (jawOpen
# 0.30 -> 0.01 on a toothy smile at 23 -> 33 degrees; 0.44 -> 0.26 / 0.01 on the astronaut at 33 / 43).
# At 25 the toothy smile, at rest 19 degrees from upright, lost her wide-mouth pair (jawOpen r 0.65 -> 0.38)
ROLL_READ = 20.0
# The head angles' neutral is where the driver's head usually is, not where it was at the first frame:
# the median of the last REF_WINDOW_S seconds of (smoothed) readings, followed with a lag of REF_LAG_S
# so that it glides. The bundled clip starts with the head turned ~12 degrees from its usual pose, so
# it asked every avatar to turn one way only, past where its turn ends, and left the other way unused:
# driven 1.25x as far (yaw sd 8 degrees) 9 of 30 faces followed at yaw r 0.69-0.79; 0.78-0.89 with it
REF_WINDOW_S = 30.0
REF_LAG_S = 1.0
REF_MAX_READINGS = 4096   # at most this many readings in the window (a camera past 120 fps thins it)
# A driver who opens wider than the avatar's jaw can show pinned it at the top of its curve on every
# open syllable, and its opening stopped following (the grey astronaut, the bundled wide-mouth clip
# opened 2.5x as wide: 139 of 473 frames at the top, jawOpen r 0.55). The jaw's change is scaled so
# that the driver's wide openings (this percentile of the last REF_WINDOW_S seconds, gliding like the
# head's reference) reach the top of the avatar's curve; it is never scaled up
JAW_WIDE_PERCENTILE = 95


class Recent:
    """A statistic of readings over the last `window` seconds of media time, followed with a lag of
    `lag` seconds (the first reading is taken as it is)."""

    def __init__(self, statistic, window: float = REF_WINDOW_S, lag: float = REF_LAG_S):
        self.statistic, self.window, self.lag = statistic, window, lag
        self.times, self.values = np.empty(0), np.empty((0, 0))
        self.value: np.ndarray | None = None
        self.last_t = 0.0

    def __call__(self, reading: np.ndarray, now: float) -> np.ndarray:
        """One reading (an array) at media time `now` -> the statistic so far."""
        if self.value is None:
            self.times, self.values = np.array([now]), np.asarray(reading, np.float64)[None]
            self.value, self.last_t = self.values[0].copy(), now
            return self.value
        # a clock that jumped back (a looped file) drops the readings now in its future
        keep = (self.times >= now - self.window) & (self.times <= now)
        self.times = np.append(self.times[keep], now)[-REF_MAX_READINGS:]
        self.values = np.concatenate([self.values[keep], np.asarray(reading, np.float64)[None]])[-REF_MAX_READINGS:]
        follow = 1.0 - math.exp(-max(now - self.last_t, 0.0) / self.lag)
        self.value = self.value + follow * (self.statistic(self.values) - self.value)
        self.last_t = now
        return self.value


def usual_pose() -> Recent:
    """Where a driver's head usually is: the median of its angles."""
    return Recent(lambda values: np.median(values, axis=0))


def wide_opening() -> Recent:
    """How wide a driver's mouth opens when it opens wide: the JAW_WIDE_PERCENTILE of its changes."""
    return Recent(lambda values: np.percentile(values, JAW_WIDE_PERCENTILE, axis=0))


class Motion:
    def __init__(self, A, p_avatar: np.ndarray, *, relative: bool = True, smooth: bool = True,
                 hold_s: float = 1.0, ease_s: float = 0.5, before_turn=before_image_turn):
        """before_turn: the zoo's Zoo.before_image_turn (Net3D's Euler order)."""
        self.A, self.relative, self.hold_s, self.ease_s = A, relative, hold_s, ease_s
        self.before_turn = before_turn
        k = A.k
        self.p_avatar = torch.as_tensor(p_avatar, dtype=torch.float32)
        self.rest = shut_mouth(self.p_avatar, A.param_names)
        span = A.hi - A.lo
        self.p_min, self.p_max = A.lo - 0.1 * span, A.hi + 0.1 * span
        # angles jitter by ~0.5 deg and blendshapes by ~0.02 frame to frame: One-Euro per parameter.
        # beta is per unit of speed: angles move tens of degrees/s, blendshapes a few units/s, so theirs
        # is larger, or speech (jawOpen) lags and its correlation with the driver drops (0.58 -> 0.66);
        # the jaw, fastest of all, also gets a higher cutoff (selfie jawOpen r 0.958 -> 0.974)
        self.filter = OneEuro(min_cutoff=np.r_[[1.2] * 3, [4.0], [2.0] * (k - 4)],
                              beta=np.r_[[0.3] * 3, [5.0] * (k - 3)]) if smooth else None
        self.p_ref: torch.Tensor | None = None
        self.angle_ids = [i for i, n in enumerate(A.param_names) if n in ANGLES]
        self.usual = usual_pose()
        self.jaw = A.param_names.index("jawOpen") if "jawOpen" in A.param_names else None
        self.jaw_top: float | None = None    # the top of the avatar's jaw curve (open_to; None: unknown)
        self.opening = wide_opening()
        # which parameters are MediaPipe blendshapes: scores whose neutral is their least (a shut mouth,
        # open eyes), so their reference follows the least the driver has shown (update)
        self.floors = torch.tensor([n in BLENDSHAPE_NAMES for n in A.param_names])
        self.dp = torch.zeros(k)
        # the head's roll is shown by turning the avatar's image, not through G: degrees, counter-clockwise
        names = A.param_names
        self.roll_index = names.index("roll") if "roll" in names else None
        self.roll = 0.0
        self.angles = (names.index("yaw"), names.index("pitch")) if {"yaw", "pitch"} <= set(names) else None
        # what G is asked stays within the range, but for the photo's roll even past it: held at its
        # edge, G was asked to turn the photo back on every frame, a face the correction (measured
        # around the photo as it is) had not read (Cox, rolled 27 degrees: yaw r 0.79 on the wide-mouth
        # clip; 0.83 held as she is, and SFace to her photo 0.67 -> 0.75)
        self.g_min, self.g_max = self.p_min.clone(), self.p_max.clone()
        if self.roll_index is not None:
            self.g_min[self.roll_index], self.g_max[self.roll_index] = -math.inf, math.inf
        self.roll_limits = (-math.inf, math.inf)
        self.last_face_t: float | None = None

    def shut_at(self, reading: float | None) -> None:
        """Drive the jaw of a mouth open at rest (its correction measured it shut: Correction.mouth_open)
        from `reading`, the lowest jawOpen this avatar can show (None: unknown)."""
        if reading is not None:
            self.rest[self.jaw] = max(reading, MOUTH_SHUT)

    def open_to(self, top: float | None) -> None:
        """The widest opening this avatar's jaw shows: the normalised change from its render at rest
        (the correction's jaw curve's top; None: unknown, the jaw's change is never scaled)."""
        self.jaw_top = top

    def move_rest(self, shift: torch.Tensor) -> None:
        """Move the rest of the first len(shift) parameters by `shift` normalised units (an angle with
        little room to turn one way starts turned a little the other: Correction.room_shift)."""
        n = len(shift)
        self.rest[:n] += shift * (self.A.hi - self.A.lo)[:n] / (2 * self.A.shift_scale)

    def bound_roll(self, shown: float | None) -> None:
        """Keep the published face within ROLL_READ degrees of upright, from its roll at rest `shown`
        (None: unknown), where the rest lies within it (else: no further out than the rest)."""
        if shown is not None:
            self.roll_limits = (min(0.0, -ROLL_READ - shown), max(0.0, ROLL_READ - shown))

    def reset(self) -> None:
        """Take the next frame with a face as the driver's neutral reference."""
        self.p_ref = None
        self.usual, self.opening = usual_pose(), wide_opening()
        if self.filter is not None:
            self.filter.reset()

    def update(self, p: np.ndarray | None, now: float) -> float | None:
        """A Net3D reading's p (None: no face) at media time `now` -> updates self.dp. Returns the
        easing factor applied this frame (None when the pose was not eased)."""
        if p is None:
            if self.last_face_t is not None and now - self.last_face_t > self.hold_s:
                ease = float(np.exp(-EASE_FRAME_S / self.ease_s))  # ease toward neutral
                self.dp = self.dp * ease
                self.roll *= ease
                return ease
            return None
        self.last_face_t = now
        p = np.asarray(p, dtype=np.float64)
        if self.filter is not None:
            p = self.filter(p, now)
        p = torch.as_tensor(p, dtype=torch.float32)
        if self.relative:
            if self.p_ref is None:
                self.p_ref = p.clone()
            # a clip cut mid-word starts with the mouth open: against that first frame, every later
            # closing asked the avatar to shut a shut mouth and only wider openings showed (jawOpen r
            # 0.17-0.39 on the selfie clip started at its widest opening, 0.92-0.97 from its start)
            self.p_ref = torch.where(self.floors, torch.minimum(self.p_ref, p), self.p_ref)
            if self.angle_ids:
                usual = self.usual(p[self.angle_ids].numpy(), now)
                self.p_ref[self.angle_ids] = torch.as_tensor(usual, dtype=torch.float32)
            # a photo posed past the range calibration saw rests at the range's edge and moves from
            # there (its roll excepted, below): G and its reader hold a face best within the range, and
            # clamping rest + change alone left a driver's turn dead until it undid the photo's whole
            # excess (a head rolled 23 degrees when G was asked the roll; the range ends at 9)
            change = p - self.p_ref
            target = self.rest.clamp(self.p_min, self.p_max) + change
        else:
            change = p - self.p_avatar
            target = p.clone()
        if self.roll_index is not None:   # G holds the photo's roll; the image turns by the driver's
            r = self.roll_index
            target[r] = self.rest[r]
            self.roll = min(max(float(change[r]), self.roll_limits[0]), self.roll_limits[1])
            if self.roll and self.angles is not None:   # G's yaw and pitch as the turned image must read them
                y, x = self.angles
                want = [float(target[y]), float(target[x]), float(target[r]) + self.roll]
                target[y], target[x] = (float(a) for a in self.before_turn(want, self.roll)[:2])
        target = torch.maximum(torch.minimum(target, self.g_max), self.g_min)
        self.dp = self.A.normalise(target) - self.A.normalise(self.p_avatar)
        if self.relative and self.jaw_top is not None:
            self._within_top(now)
        return None

    def _within_top(self, now: float) -> None:
        """Scale the jaw's opening (its change from the shut rest) so that the driver's recent wide
        openings reach jaw_top, where they would go past it."""
        j = self.jaw
        shut = float(self.A.normalise(self.rest.clamp(self.p_min, self.p_max))[j] - self.A.normalise(self.p_avatar)[j])
        opening = float(self.dp[j]) - shut
        wide = float(self.opening(np.array([max(opening, 0.0)]), now)[0])
        room = self.jaw_top - shut
        if opening > 0.0 and wide > room > 0.0:
            self.dp[j] = shut + opening * room / wide


def shut_mouth(p_avatar: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The pose relative motion starts from: the avatar's own, with an open mouth shut."""
    rest = p_avatar.clone()
    if mouth_is_open(rest.numpy(), names):
        rest[names.index("jawOpen")] = MOUTH_SHUT
    return rest
