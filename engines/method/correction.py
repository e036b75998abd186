"""Per-avatar response correction (beyond the paper), measured once per avatar on its own renders.

A is one linear map for all faces, but how far a direction moves *this* avatar varies by face, is often
asymmetric (one avatar turns right easily and left hardly), and directions can move the head instead of
doing their job (on some avatars a blink direction turns the head, and a smile direction cannot widen a
smile that is already full). Read by the Net3D runtime on calibration's view:
  * for yaw, pitch, roll and jawOpen, the response curve p_i(t) along direction i (SWEEPS), kept from
    its low to its peak (response_curve) and used inverted: the requested change is mapped to the t
    that produces it (a mouth shows little below some opening and then opens fast: without its curve
    small speech movements vanish); the jaw's curve is the mean of its curves at rest and in contexts
    the avatar will be driven in (JAW_CONTEXTS), and as a frame's angles near the reach limit a second
    curve, read in the same contexts with their angles at the reach, takes over (JawFar); as the head
    pitches, two more, read in them with their pitch at G's bound either way, scale its step (JawPitch);
    a jaw whose opening the reader cannot see on this avatar, even read on to LATE_END, stays on with a
    typical avatar's curve (blind_jaw), and one whose reading only falls from rest keeps that fall,
    driven from shut (closing_curve);
  * for each other expression direction and each sense (+/-): whether a step of `probe` moves its own
    parameter that way by at least GATE_MIN (normalised units) and GATE_RAW (its own units); a sense
    that does not is switched off for this avatar, since all it can add is cross-talk;
  * the head-pose drift of each expression direction, one-sided slopes over +/-`step` and +/-`probe`,
    cancelled by asking the pose directions for the opposite change where it stands clear of the
    reading's jitter (head_drift).
A render without a face (a turn too far for this avatar) ends that sweep's curve or switches that
sense off; only a render at rest without one leaves the avatar uncorrected.
With the spread of the tuned requests known, the angles and the opening jaw are held together within
the avatar's reach (within_reach), and G's pitch within PITCH_REACH on its own.
The reenactor applies it to every request; enrollment-time tuning of A (calibration.avatar_directions)
uses the same gate to keep the expression columns that still work.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from engines.core.views import net3d_view, to_uint8
from engines.method.net3d import MediaPipeNet3D

GATE_MIN = 0.5  # normalised units an expression direction must move its own parameter to stay on
# ... and at least this much in the parameter's own units (blendshape scores jitter ~0.02 frame to
# frame): a parameter with a narrow calibrated range (mouthFunnel: 0..0.1) passes 0.5 normalised units
# on noise, and its large normalised requests then push the latent where the avatar was never tuned
GATE_RAW = 0.04
# normalised units (~3.3 degrees of yaw) an expression must move a head angle at the probe step for that
# drift to be cancelled (head_drift)
DRIFT_FLOOR = 0.5
# steps (normalised units) at which the correction reads each curved parameter's response: the angles
# either way; jawOpen mostly opening (a closed mouth cannot close much further)
SWEEPS = {"yaw": range(-5, 6), "pitch": range(-5, 6), "roll": range(-5, 6), "jawOpen": range(-4, 11)}
# ... except on a photo whose mouth is open (jawOpen above MOUTH_OPEN): the driver shuts it (the motion
# state drives it from a shut mouth), and such a mouth takes ~10 steps to close (a surprised photo: 0.53
# at rest, 0.34 at -4, 0.06 at -10)
SHUT_SWEEP = range(-12, 11)
MOUTH_OPEN = 0.3
# ... or whose jaw, swept, closes at least this share of its whole range below rest (partly_open). The
# driver's jaw reference follows the least it has shown, so a jaw driven from the photo's rest never
# closes below it, and that part of its range went unused: a laugh (jawOpen 0.2, a closed mouth's
# reading) whose renders close 0.6 units and open 0.6 before the laugh takes over read jawOpen r
# 0.11-0.34 on four pairs; driven from shut, 0.47-0.89. A grey speaking Obama (0.25 of its range):
# his car pair 0.59 -> 0.77; the mirrored one (0.23): +0.01; the colour one (0.13): -0.02, so not him
OPEN_SHARE = 0.2
# ... but only as far as SHUT_KNEE of that closing: the last hundredths of a jawOpen reading took the
# last ~5 steps (a speaking photo, mirrored: 87% of its closing done at step -6, all at -12), and a jaw held
# 3 sds out there bent the whole head: its turns stopped and reversed (yaw r 0.63 on the bundled clip;
# re-rendered with the jaw stopped at -8, -9, -10: 0.82, 0.82, 0.78). At 97% it stops at -9 (0.82). The
# price, on the open-mouth photos' jawOpen r: up to 0.07 at 95-97%, 0.13 at 90% (docs/reenactment.md)
SHUT_KNEE = 0.97
# A jaw still opening at the sweep's last step and short of JAW_LATE there (the typical avatar's
# response at step 7.5, TYPICAL_JAW) opens late: its curve is read again with the sweep run on to
# LATE_END. A toothy smile read 0.17 jawOpen at step 10 (3.4 units) and 0.34 at 14, still a clean face;
# every driver opening over ~0.3 clamped at step 10, and her jawOpen r on the wide-mouth selfie clip was
# 0.59
JAW_LATE = 4.0
LATE_END = 14
# ... and one short of JAW_FULL there (the typical avatar's response at step 10) keeps part of the run:
# from step 10 at JAW_FULL to LATE_END at JAW_LATE, in proportion (late_end). With the all-or-nothing
# rule an elderly man whose jaw read 4.01 units at step 10 (enrolled on an AMD VM) kept the sweep's end,
# and on the car clip his wide openings, head pitched down, clamped there at 0.16 jawOpen (r 0.47; 0.64
# with his pack from an Intel VM); read on to 14, 0.74. 9 of 30 faces read 4-6 there
JAW_FULL = 6.0
# A jaw the reader does not see open through the usual sweep (blind_jaw) is read on to LATE_END too, and
# takes the curve read there where it shows one: a half-shadowed man's mouth opened only past step ~11
# (his readings 0.4 units at step 10, 1.9 at 13), and driven by the typical curve, clamped at step 10, it
# hardly moved (jawOpen r 0.08-0.28 on his six talking pairs)
# An angle whose curve reaches under ROOM_SHORT normalised units one way (~9 degrees of yaw) and more
# than ROOM the other moves its rest toward the other side, until the short side has ROOM (~11
# degrees) or the other is down to it (room_shift). A bearded man whose hand on his head covers his
# face past 0.98 units of yaw one way (1.90 the other) followed the bundled clip, which turns mostly
# that way, at yaw r 0.76; with his rest turned 0.40 units (~3 degrees) the other way, 0.89. A clip
# turning toward an avatar's long side loses a little (Obama mirrored, short by 1.23: 0.91 -> 0.86), one
# turning the other way gains; a milder shortfall (1.30) moved cost 0.07 of jawOpen r, so it stays.
ROOM_SHORT = 1.25
ROOM = 1.5
# ... and a move under this is left out: a 64-px render's angle reading jitters by 0.1-0.2 units, so it
# would change the avatar's rest and nothing a viewer sees
ROOM_MIN_MOVE = 0.15
# how far (in standard deviations of the requests the avatar's G was tuned on) a frame's head angles and
# its opening jaw may reach together: past it a turned, tilted head with an open mouth is a combination G
# never saw, and the mouth stays shut (Mona Lisa mirrored, widemouth clip: jawOpen r 0.51). The angles
# give way, smoothly from KNEE of the reach; they keep at least ANGLE_FLOOR sds, and more where the jaw's
# curves show it opens as wide with the head far out (JawFar.room: a jaw that needs steps 10-14 to open
# counted as 2.5-3.5 sds of distance, and three elderly faces' yaw r fell to 0.75-0.79 on that clip)
REACH = 3.0
KNEE = 0.8
ANGLE_FLOOR = 1.5
# ... and an avatar's own reach, per octant of (yaw, pitch, roll): the angles are rendered along the
# 8 diagonals at these radii (sds), once with the jaw at rest and once opening as far again, and an
# octant reaches as far as its renders kept a face (REACH if all did, ANGLE_FLOOR if the first did
# not). Lenna, turned 19 degrees and pitched 14, lost her face at 2.5 sds turning and pitching further
# with the head rolled back: 8% of a clip's frames, which asked for 2.3-2.9 sds there, some with the
# mouth open wide. 5 of 57 avatars measured here lose one before REACH with the jaw at rest
REACH_PROBES = (2.0, 2.5, 3.0)
# G's pitch is asked at most this far (sds of the tuned requests) either way. An avatar whose head
# pitches little per step (Lenna: 2 normalised units of reading at step 5, 2.6 sds) was asked for the
# sweep's end whenever the driver nodded, and there a 64-px mouth hardly opens (her jaw read 1.5 units
# at step 9 pitched 5 steps down, 4.1 level; her face gone at step 12): jawOpen r 0.46-0.56 on five
# wide-mouth pairs; held at 2, 0.61-0.65 on four of them. Yaw keeps the whole reach: a turn is what a
# viewer follows first. At 1.5 her jaws were no better, and the main table's pitch r fell 0.036 (2: 0.009)
PITCH_REACH = 2.0
# the jaw's curve is read at rest and in this many contexts (head angles and other expressions drawn at
# CONTEXT_SD sds of the tuned requests, a fixed draw in mirrored pairs), and their mean response is
# inverted. Read at rest alone, a mouth that opens late and steeply there stays shut once the head
# pitches and tilts: Einstein's curve at rest was 0.7 / 3.2 / 6.1 at steps 6-8 and his jawOpen r 0.50 on
# the wide-mouth clip; with the mean 0.83. Random draws of 8 moved single pairs by +-0.04 with the seed
# (mirrored pairs steady that); 12 cost 1 s more at a pack's first session for no clear gain
JAW_CONTEXTS = 8
CONTEXT_SD = 1.0
CONTEXT_SEED = 0
# ... and once more in the same contexts with their angles moved out to the reach (REACH sds from rest,
# the farthest the limit lets them go). A frame whose angles lie beyond the mean context's asks the jaw
# for a step between the two curves', by its own angles (JawFar): with the head turned and tilted ~3
# sds, Obama's 96-px avatar needed half as much again to open its mouth as its mean curve gave (jawOpen
# r 0.24 on the wide-mouth clip)
# ... provided at least FAR_MIN_SHARE of the far contexts keep a face through the usual sweep: Lenna's
# far curve was one context's of 8 (the others lost her face at steps -4 to 11 with the head far out),
# and which one or two survived set where her far openings were asked for (car clip x1.5: jawOpen r
# 0.35 with one, 0.53 with none, her mean curve alone)
FAR_MIN_SHARE = 0.5
# ... and in the same contexts with their pitch moved to G's pitch bound (PITCH_REACH), each way: a
# 64-px mouth pitched reads less (or more) open than level, and the mean curve's contexts, in mirrored
# pairs, average that away. A frame's opening step is scaled from the mean curve's toward the pitched
# curve's, by its pitch's share of the bound (JawPitch). Kudrow followed a driver who nods as she opens
# (the bundled wide-mouth clip) at jawOpen r 0.59, her renders pitched to the bound reading 0.04-0.50
# at jaw steps 3-9 against 0.08-0.57 level; with it 0.77. One sweep each way (not the mean of eight)
# was too noisy at 64 px: docs/reenactment.md, "A pitched head's jaw"
# A head turning on a 64-px render reads as a mouth opening: the astronaut's, Obama's and a small
# portrait's jawOpen read +0.9 to +2.2 normalised units (0.06-0.14 raw) at yaw steps +-3 and up to 3.5 at
# +-5 with the jaw at rest, which a clip turning the head while it talks sees as its mouth moving. What
# each angle's sweep adds to the jaw's reading is taken off the jaw's request (JawDrift), on a side
# whose farthest render moved it at least this much (units)
JAW_DRIFT_FLOOR = 0.5
# ... by the share of it that shows the jaw best: on a small portrait with glasses a closed mouth
# turned 4 steps read +1.98 and could be closed to +1.22 at most, and taking all of it off cost him jawOpen
# r 0.59 -> 0.53 on the bundled wide-mouth clip (the astronaut and Obama gained 0.06-0.07); each side
# is rendered at these steps with the jaw asked for rest and JAW_CHECK_OPEN units, each share taken
# off, and the share whose readings come closest is kept
JAW_DRIFT_SHARES = (0.0, 0.5, 1.0)
JAW_CHECK_STEPS = (3.0, 5.0)
JAW_CHECK_OPEN = 3.0
# the median jaw curve (steps, response) of the 37 portraits and variants measured on 2026-12-03 (their
# quartiles at a response of 3: steps 4.1-8.1), for a jaw this avatar's renders do not let the reader
# measure (blind_jaw)
TYPICAL_JAW = (np.array([0.0, 2.7, 3.6, 4.9, 6.1, 7.5, 8.7, 10.0]), np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
# normalised units a direction's curve must span to be kept (response_curve, closing_curve): a reading
# jitters by 0.1-0.3 units
LEAST_RESPONSE = 0.5


def response_curve(t: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, response) of one direction on one avatar, ready to invert by interpolation, or None
    when the direction hardly moves this avatar (it is then left linear).

    Only the stretch from the response's low to its peak is kept: past its peak a direction undoes
    itself (a mouth that cannot open further closes again; a curve flattened there sent wide-open
    requests to the far end: jawOpen r -0.4 on a toothy-smile portrait), so requests beyond it clamp
    at the peak. The rest is made monotone with a minimum slope (the inverse's gain at most 20) and
    anchored at 0, so it inverts without jumps: on a plateau through t = 0 a tiny requested change
    would map to the plateau's end, and the avatar would never return to neutral."""
    z = int(np.argmin(np.abs(t)))
    lo, top = int(np.argmin(r[:z + 1])), z + int(np.argmax(r[z:]))
    t, r = t[lo:top + 1], r[lo:top + 1]
    if top == z or r[-1] - r[0] < LEAST_RESPONSE:
        return None
    return _rising(t, r)


def _rising(t: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A response made monotone with a minimum slope (an inverse's gain at most 20), 0 at t = 0."""
    r = np.maximum.accumulate(r)
    r = np.concatenate([[0.0], np.cumsum(np.maximum(np.diff(r), 0.05 * np.diff(t)))])
    return t, r - np.interp(0.0, t, r)


def closing_curve(t: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, response) of a jaw whose reading peaks at rest and only falls either way: its stretch
    from the low below rest up to rest, made monotone and anchored there like response_curve's, or None
    when it closes under LEAST_RESPONSE or reads higher anywhere above rest. A laughing photo whose tuned G
    darkens the laugh instead of opening it (read 1.1 units lower at step 10) and shuts it below rest
    (0.8 at step -4) is a mouth open at rest that cannot open further: driven from shut, it closes and
    opens with the driver up to its own laugh (partly_open); given the typical curve as a blind jaw, it
    read jawOpen r -0.40 to -0.70 against the driver. None too when no render above rest showed a face."""
    z = int(np.argmin(np.abs(t)))
    lo = int(np.argmin(r[:z + 1]))
    if z + 1 == len(t) or np.max(r[z:]) > r[z] or r[z] - r[lo] < LEAST_RESPONSE:
        return None
    return _rising(t[lo:z + 1], r[lo:z + 1])


def closed_to_knee(curve: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A jaw curve (steps, response) that closes below rest, started at the step nearest rest where
    SHUT_KNEE of its closing is done: requests for less clamp there."""
    t, r = curve
    if r[0] >= 0:
        return curve
    knee = int(np.flatnonzero(r <= SHUT_KNEE * r[0]).max())
    return t[knee:], r[knee:]


def late_end(curve: tuple[np.ndarray, np.ndarray], steps: np.ndarray) -> float | None:
    """The step a jaw curve (steps, response) still rising at its sweep's last step is read on to:
    LATE_END where it is short of JAW_LATE there, nearer the last step the nearer it comes to JAW_FULL,
    so that a jaw just over a bound is read like one just under it; None where it peaks inside the
    sweep or reaches JAW_FULL."""
    t, r = curve
    last = float(steps[-1])
    if float(t[-1]) < last or float(r[-1]) >= JAW_FULL:
        return None
    short = min((JAW_FULL - float(r[-1])) / (JAW_FULL - JAW_LATE), 1.0)
    return last + short * (LATE_END - last)


def cut_at(curve: tuple[np.ndarray, np.ndarray], end: float) -> tuple[np.ndarray, np.ndarray]:
    """A curve (steps, response) ending at step `end` (interpolated there); as it is if it ends before."""
    t, r = curve
    if end >= float(t[-1]):
        return curve
    keep = t < end
    return np.append(t[keep], end), np.append(r[keep], np.interp(end, t, r))


def mouth_is_open(p: np.ndarray, names: list[str]) -> bool:
    """Whether a pose reading p shows an open mouth (jawOpen above MOUTH_OPEN: 41 closed-mouth portraits
    read 0.00-0.19, two surprised ones 0.53-0.56)."""
    return "jawOpen" in names and float(p[names.index("jawOpen")]) > MOUTH_OPEN


def read_again_shut(curve: tuple[np.ndarray, np.ndarray] | None, blind: bool, mouth_open: bool) -> bool:
    """Whether Correction.measure drops a reading of the jaw (its curve; None: it has none) and reads it
    again swept shut: one swept open and read on this avatar whose curve shows it partly open at rest."""
    return curve is not None and not blind and not mouth_open and partly_open(curve)


def partly_open(curve: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether a jaw curve (steps, response from rest) closes at least OPEN_SHARE of its range below rest."""
    _, r = curve
    return -float(r[0]) >= OPEN_SHARE * float(r[-1] - r[0])


def blind_jaw(seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The jaw's curve when its response is too small to invert: a mouth the reader cannot see open
    (a face turned ~35 degrees: its sweep read jawOpen 0.00-0.07 while the renders opened wide) is
    still a mouth the driver opens, so it stays on with the typical avatar's opening (TYPICAL_JAW),
    closing one to one, within the steps whose renders showed a face. Switched off, such an avatar's
    jawOpen r was 0.05; one to one both ways 0.49-0.87, two wide-mouth pairs under 0.6 (the reader
    sees little below step ~6)."""
    steps, response = TYPICAL_JAW
    t = np.concatenate([seen[seen < 0], steps])
    r = np.concatenate([seen[seen < 0], response])
    end = min(float(seen[-1]), float(steps[-1]))
    keep = t < end
    return np.append(t[keep], end), np.append(r[keep], np.interp(end, t, r))


def gate_thresholds(A) -> np.ndarray:
    """[K-3]: the response (normalised units) each expression sense must reach to stay on."""
    span = (A.hi - A.lo).numpy()[3:]
    return np.maximum(GATE_MIN, GATE_RAW / span * 2 * A.shift_scale)


@dataclass
class JawFar:
    """The jaw's curve in far contexts: a request whose angles lie `near`..`far` sds from rest (the
    radius of angles / sd) takes a step blended linearly from the near curve's to this one's."""
    index: int                           # jawOpen's
    near: float                          # mean angle radius of the curves behind the near (mean) curve
    far: float                           # ... of the far contexts
    curve: tuple[np.ndarray, np.ndarray]
    sd: torch.Tensor                     # [3] the angles' tuned sds

    def radius(self, dp: torch.Tensor) -> float:
        return float(angle_radius(dp, self.sd))

    def step(self, near_step: float, request: float, radius: float) -> float:
        w = min(max((radius - self.near) / (self.far - self.near), 0.0), 1.0)
        t, r = self.curve
        return (1 - w) * near_step + w * float(np.interp(request, r, t))

    def room(self, request: float, near_top: float) -> float:
        """How far (sds) the angles may reach while the jaw shows `request` (normalised): as far as the
        tops of the near curve (its last response, near_top) and of this one, blended by radius as step
        blends them, still reach it; inf when this one's does, or when the jaw opens no less far out."""
        far_top = float(self.curve[1][-1])
        if request <= far_top or far_top >= near_top:
            return math.inf
        if request >= near_top:
            return self.near
        return self.near + (near_top - request) / (near_top - far_top) * (self.far - self.near)


@dataclass
class JawDrift:
    """How far the head angles' steps alone move the jaw's reading (JAW_DRIFT_FLOOR)."""
    along: dict[int, tuple[np.ndarray, np.ndarray]]      # angle -> (its steps, the jaw reading's change)

    def __call__(self, out: torch.Tensor) -> float:
        """The change in the jaw's reading that request out's angle steps add (each angle's, summed)."""
        return float(sum(np.interp(float(out[i]), t, c) for i, (t, c) in self.along.items()))


def checked_drift(A, readings: "_Readings", p0: np.ndarray, jaw: int, jaw_curve,
                  drift: JawDrift) -> JawDrift | None:
    """drift (of jawOpen, index jaw) with each side of each angle scaled by the share (JAW_DRIFT_SHARES)
    of it that, taken off the jaw's request, shows the jaw readings wanted (0 and JAW_CHECK_OPEN) best
    at that side's JAW_CHECK_STEPS; None when no side keeps any."""
    t, r = jaw_curve
    wanted = np.array([0.0, min(JAW_CHECK_OPEN, 0.6 * float(r[-1]))])
    along = {}
    for i, (steps, d) in drift.along.items():
        d = d.copy()
        for sign in (-1.0, 1.0):
            at = sign * np.asarray(JAW_CHECK_STEPS, np.float64)
            off = np.interp(at, steps, d)
            if not off.any():
                continue
            errors = [_jaw_error(A, readings, p0, jaw, i, at, np.interp(wanted[:, None] - g * off, r, t),
                                 wanted) for g in JAW_DRIFT_SHARES]
            d[np.sign(steps) == sign] *= JAW_DRIFT_SHARES[int(np.argmin(errors))]
        if d.any():
            along[i] = (steps, d)
    return JawDrift(along) if along else None


def _jaw_error(A, readings, p0, jaw: int, i: int, at: np.ndarray, jaw_steps: np.ndarray, wanted: np.ndarray) -> float:
    """Summed |jaw reading - wanted| over renders with angle i at each of `at` and the jaw at jaw_steps
    [wanted, at] (inf where one shows no face)."""
    dps = torch.zeros(jaw_steps.size, A.k)
    dps[:, i] = torch.as_tensor(np.broadcast_to(at, jaw_steps.shape).ravel(), dtype=torch.float32)
    dps[:, jaw] = torch.as_tensor(jaw_steps.ravel(), dtype=torch.float32)
    shown = _normalised(A, readings(dps))[:, jaw] - p0[jaw]
    err = np.abs(shown - np.repeat(wanted, len(at))).sum()
    return float(err) if np.isfinite(err) else math.inf


def angle_jaw_drift(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, jaw reading change) along one angle's sweep (t, v: the readings within its seen stretch),
    each side kept where its farthest render moved the reading at least JAW_DRIFT_FLOOR, and made to
    grow outward in that sign (a reading jitters by 0.1-0.3 units); None where neither side is kept."""
    z = int(np.argmin(np.abs(t)))
    out = np.zeros(len(t))
    for side in (np.arange(z + 1, len(t)), np.arange(z - 1, -1, -1)):   # outward from rest
        if len(side) and abs(v[side[-1]]) >= JAW_DRIFT_FLOOR:
            sign = np.sign(v[side[-1]])
            out[side] = sign * np.maximum.accumulate(np.maximum(sign * v[side], 0.0))
    return (t, out) if out.any() else None


@dataclass
class Correction:
    curves: dict[int, tuple[np.ndarray, np.ndarray]]   # parameter -> (steps t, monotone response)
    drift: torch.Tensor      # [2, 3, K-3]: head-angle drift per unit of each expression, - and + senses
    gates: torch.Tensor      # [2, K-3] bool: which senses of each expression move this avatar
    # (sd [K] of the requests G was tuned on, jawOpen's index) for within_reach, or None: no limit
    reach: tuple[torch.Tensor, int | None] | None = None
    jaw_far: JawFar | None = None   # the jaw's curve with the head far from rest (None: the mean curve alone)
    octant_reach: torch.Tensor | None = None   # [8] the reach (sds) of each octant (octant_of); None: REACH
    jaw_pitch: "JawPitch | None" = None   # the jaw's curves pitched to the bound (None: level ones alone)
    jaw_drift: "JawDrift | None" = None   # what the angles alone add to the jaw's reading (None: nothing clear)
    jaw: int | None = None   # jawOpen's index where it has a curve (None: it has none, or there is no jaw)
    pitch: int | None = None   # pitch's index, held within PITCH_REACH with the reach (None: no pitch)
    mouth_open: bool = False   # the jaw was swept shut: the motion drives it from its shut reading
    blind: bool = False        # the jaw's curve is the typical avatar's (blind_jaw), not read on this one

    @classmethod
    @torch.no_grad()
    def measure(cls, A, render: Callable[[torch.Tensor], torch.Tensor], step: float = 2.0,
                probe: float = 4.0, spread=None, image_reader=None, reach: bool = True,
                mouth_open: bool = False, publish=None) -> "Correction | None":
        """render: requests dp [N, K] -> the avatar's images [N, 3, R, R] in [-1, 1] on the CPU;
        spread: [K] sd of the requests the avatar was tuned on (its pack's record; None: the jaw is read
        at rest only, and no reach limit); reach: the open-loop guards: angles and jaw limited together
        (within_reach), and what the angles add to the jaw's reading taken off (JawDrift);
        image_reader: () -> a Net3D reader of single images (default: MediaPipe's runtime, image mode);
        mouth_open: the avatar's mouth is open at rest (mouth_is_open), so its jaw is swept shut; a jaw
        whose curve shows it partly open (partly_open) is then measured again as open;
        publish: renders -> the frames a viewer is shown of them (uint8 [N, H, W, 3]): each render is
        read there too, and the two readings averaged (None: the Net3D view alone).
        None when the render at rest shows no face (a jaw context without one is left out)."""
        readings = _Readings(render, image_reader or (lambda: MediaPipeNet3D("image")), publish)
        corr = cls._read(A, readings, step, probe, spread, reach, mouth_open)
        if corr is not None and read_again_shut(corr.curves.get(corr.jaw), corr.blind, mouth_open):
            corr = cls._read(A, readings, step, probe, spread, reach, True)
        return corr

    @classmethod
    def _read(cls, A, readings: "_Readings", step: float, probe: float, spread, reach: bool,
              mouth_open: bool) -> "Correction | None":
        first = cls._measure(A, readings, step, probe, spread, reach, mouth_open, late=None)
        # a jaw still opening at the sweep's end is swept on (late_end): only its new steps are rendered
        return cls._measure(A, readings, step, probe, spread, reach, mouth_open, late=first) \
            if isinstance(first, float) else first

    @classmethod
    def _measure(cls, A, readings: "_Readings", step: float, probe: float, spread, reach: bool,
                 mouth_open: bool, late: float | None):
        """measure's work with the jaw swept to LATE_END and its curves kept to step `late` when it is
        given; when not, the step to read on to (late_end) where the jaw is still opening."""
        k = A.k
        m = k - 3
        jaw_steps = SHUT_SWEEP if mouth_open else SWEEPS["jawOpen"]
        sweeps = {**SWEEPS, "jawOpen": range(jaw_steps.start, LATE_END + 1) if late is not None else jaw_steps}
        swept = {A.param_names.index(n): np.asarray(ts, np.float64) for n, ts in sweeps.items()}
        jaw = A.param_names.index("jawOpen") if "jawOpen" in A.param_names else None
        contexts = jaw_contexts(spread, k, jaw)
        far = at_reach(contexts, spread)
        pitch = A.param_names.index("pitch") if "pitch" in A.param_names else None
        pitched = pitched_contexts(contexts, spread, pitch)
        sweeps = [_sweep(torch.zeros(k), i, ts) for i, ts in swept.items()]
        sweeps += [_sweep(c, jaw, swept[jaw]) for c in torch.cat([contexts, far, pitched])]
        e = torch.eye(k)[3:]
        limited = reach and spread is not None and len(spread) == k
        probes = reach_probes(spread, k, jaw) if limited else torch.zeros(0, k)
        dps = torch.cat([torch.zeros(1, k), e * step, -e * step, e * probe, -e * probe, *sweeps, probes])
        faces = readings(dps)
        if faces[0] is None:
            return None
        faces, probe_faces = faces[:len(faces) - len(probes)], faces[len(faces) - len(probes):]
        fixed = 1 + 4 * m + sum(len(t) for t in swept.values())
        p = _normalised(A, faces[:fixed])   # a render without a face: a row of nan
        p0 = p[0]
        plus, minus = p[1:1 + m] - p0, p[1 + m:1 + 2 * m] - p0
        far_plus, far_minus = p[1 + 2 * m:1 + 3 * m] - p0, p[1 + 3 * m:1 + 4 * m] - p0
        at, curves, jaw_far, jaw_along, blind, sides = 1 + 4 * m, {}, None, {}, False, []
        for i, t in swept.items():
            r = p[at:at + len(t), i] - p0[i]
            if i < 3 and jaw is not None:
                jaw_along[i] = seen_stretch(t, p[at:at + len(t), jaw] - p0[jaw])
            at += len(t)
            if i == jaw and len(contexts):
                n = len(contexts) * len(t)
                usual = float(jaw_steps[-1])
                near_kept, near = _context_responses(A, faces[fixed:fixed + n], jaw, t, len(contexts), usual)
                far_kept, far_r = _context_responses(A, faces[fixed + n:fixed + 2 * n], jaw, t, len(contexts),
                                                     usual)
                sides = [_context_responses(A, faces[fixed + j * n:fixed + (j + 1) * n], jaw, t, len(contexts),
                                            usual)[1] for j in range(2, 2 + len(pitched) // len(contexts))]
                mean = chained_mean([r, *near], int(np.argmin(np.abs(t))))
                r = np.where(np.isfinite(r), mean, np.nan)   # the rest sweep's lost face ends it (seen_stretch)
                jaw_far = _jaw_far(jaw, t, far_r, far[far_kept], contexts[near_kept], spread)
            seen, r = seen_stretch(t, r)
            curve = response_curve(seen, r)
            if curve is None and i == jaw:
                curve = closing_curve(seen, r)
            if curve is not None and i == jaw and mouth_open:
                curve = closed_to_knee(curve)
            if curve is None and i == jaw and seen[-1] > 0:
                curve, jaw_far, blind = blind_jaw(seen), None, True   # its far curve is as blind
            if curve is not None:
                curves[i] = curve
        own = np.arange(m), np.arange(3, k)
        gate = gate_thresholds(A)
        gates = np.stack([far_minus[own] <= -gate, far_plus[own] >= gate])   # nan (no face): off
        for i in curves:
            if i >= 3:   # an expression with a curve: the curve decides how it moves
                gates[:, i - 3] = True
        drift = head_drift(minus[:, :3], far_minus[:, :3], plus[:, :3], far_plus[:, :3], step, probe)
        limit = (torch.as_tensor(spread, dtype=torch.float32), jaw) if limited else None
        leans = jaw_pitch(swept[jaw], sides, float(pitched[-1, pitch])) \
            if jaw in curves and not blind and len(sides) == 2 else None
        if jaw not in curves:
            jaw_far = None
        elif late is None and (end := late_end(curves[jaw], swept[jaw])) is not None:
            return end
        elif late is None and blind and float(curves[jaw][0][-1]) >= float(swept[jaw][-1]):
            return float(LATE_END)   # a blind jaw may open past the sweep (see JAW_FULL)
        elif late is not None:
            curves[jaw] = cut_at(curves[jaw], late)
            if jaw_far is not None:
                jaw_far = replace(jaw_far, curve=cut_at(jaw_far.curve, late))
            if leans is not None:
                leans = replace(leans, curves=tuple(None if c is None else cut_at(c, late) for c in leans.curves))
        octants = octant_reach([f is not None for f in probe_faces]) if limited else None
        # what the angles alone add to the jaw's reading: not for a blind jaw (its readings say nothing),
        # an open one (driven from shut, where a turn does not add what it adds to the open rest), nor
        # under head-pose feedback (reach off: it steers the angles past the sweeps, and there a jaw
        # closed against the turn hid a third of the turn from its reader: the astronaut shown 8.4
        # degrees of a 12.2-degree turn, 10.8 without)
        # nor for a jaw that measure reads again swept shut, dropping this reading
        along = {} if not reach or jaw not in curves or blind or mouth_open or \
            read_again_shut(curves[jaw], blind, mouth_open) else \
            {i: c for i, (t, v) in jaw_along.items() if (c := angle_jaw_drift(t, v)) is not None}
        jaw_drift = checked_drift(A, readings, p0, jaw, curves[jaw], JawDrift(along)) if along else None
        return cls(curves, drift, torch.as_tensor(gates), limit, jaw_far, octants, leans, jaw_drift,
                   jaw if jaw in curves else None, pitch, mouth_open, blind)

    def reach_of(self, dp: torch.Tensor) -> float:
        """How far (sds) the angles of request dp may reach: the octants' reaches blended by its
        direction (trilinear between the cube's corners: continuous as an angle changes sign)."""
        if self.octant_reach is None or self.reach is None:
            return REACH
        u = dp[:3] / self.reach[0][:3]
        u = u / u.abs().max().clamp(min=1e-6)                            # onto the cube: a diagonal is a corner
        weights = ((1 + _CORNERS * u) / 2).prod(dim=1)                   # sum to 1
        return float((weights * self.octant_reach).sum())

    def room_shift(self) -> torch.Tensor:
        """[3] how far (normalised units) to move each head angle's rest where one side reaches under
        ROOM_SHORT: toward the side that reaches further, until the short side has ROOM or the other is
        down to it; 0 where neither side is short, or both are, or the move is under ROOM_MIN_MOVE."""
        shift = torch.zeros(3)
        for i in range(3):
            if i in self.curves:
                _, r = self.curves[i]
                low, high = -float(r[0]), float(r[-1])
                if high < ROOM_SHORT and low > ROOM:
                    shift[i] = -min(ROOM - high, low - ROOM)
                elif low < ROOM_SHORT and high > ROOM:
                    shift[i] = min(ROOM - low, high - ROOM)
        return torch.where(shift.abs() >= ROOM_MIN_MOVE, shift, 0.0)

    @property
    def jaw_top(self) -> float | None:
        """The widest opening the jaw's curve shows (normalised change from rest; None: no curve)."""
        return None if self.jaw is None else float(self.curves[self.jaw][1][-1])

    def shut_reading(self, A, p: np.ndarray) -> float | None:
        """The lowest jawOpen reading the jaw's curve reaches from the avatar's rest p (None: no curve)."""
        if self.jaw is None:
            return None
        low = A.normalise(torch.as_tensor(p, dtype=torch.float32))
        low[self.jaw] += float(self.curves[self.jaw][1][0])
        return float(A.denormalise(low)[self.jaw])

    def __call__(self, dp: torch.Tensor) -> torch.Tensor:
        """A requested change dp [K] (normalised) -> the request that shows it on this avatar."""
        out = dp.clone()
        ex = out[3:]
        ex[~(self.gates[1] | (ex <= 0))] = 0.0           # senses that do not move this avatar: off
        ex[~(self.gates[0] | (ex >= 0))] = 0.0
        out[:3] = out[:3] + self.drift[0] @ ex.clamp(max=0) + self.drift[1] @ ex.clamp(min=0)
        jaw = self.jaw
        wanted = 0.0 if jaw is None else float(out[jaw])   # the jaw's reading asked for, before its curve
        for i, (t, r) in self.curves.items():
            if i != jaw and float(out[i]) != 0.0:  # no change requested stays no change
                out[i] = float(np.interp(float(out[i]), r, t))  # clamps to the measured range
        if self.reach is not None and self.pitch is not None:
            bound = PITCH_REACH * float(self.reach[0][self.pitch])
            out[self.pitch] = out[self.pitch].clamp(-bound, bound)
        if jaw is None:
            return out if self.reach is None else within_reach(out, *self.reach, self.reach_of(out))
        out[jaw] = self._jaw_step(wanted, out)
        if self.reach is None:
            return out
        far = self.jaw_far
        room = None if far is None or wanted == 0.0 else far.room(wanted, float(self.curves[jaw][1][-1]))
        out = within_reach(out, *self.reach, self.reach_of(out), room)
        # the angles the limit leaves decide the jaw's step (the limit saw a step a little larger)
        out[jaw] = self._jaw_step(wanted, out)
        return out

    def _jaw_step(self, wanted: float, out: torch.Tensor) -> float:
        """The jaw's step that shows `wanted` with request out's angle steps: what the angles add to the
        reading (jaw_drift) is taken off first, then the jaw's curves (near, and far by the angles'
        radius) give the step."""
        request = wanted - (0.0 if self.jaw_drift is None else self.jaw_drift(out))
        if request == 0.0:
            return 0.0
        t, r = self.curves[self.jaw]
        near = float(np.interp(request, r, t))
        far = self.jaw_far
        # the far curve closes no further than the near one (closed_to_knee)
        step = near if far is None else max(far.step(near, request, far.radius(out)), float(t[0]))
        if self.jaw_pitch is None or near <= 0:   # a closing request keeps its step (trialled on openings)
            return step
        return self.jaw_pitch.step(step, near, request, float(out[self.pitch]))


def jaw_contexts(spread, k: int, jaw: int | None) -> torch.Tensor:
    """[JAW_CONTEXTS, K] requests at CONTEXT_SD sds of the tuned ones, jaw at rest (a fixed draw), or [0, K]
    without a record of the spread or a jaw."""
    if spread is None or len(spread) != k or jaw is None:
        return torch.zeros(0, k)
    half = torch.randn(JAW_CONTEXTS // 2, k, generator=torch.Generator().manual_seed(CONTEXT_SEED))
    draw = torch.cat([half, -half])   # in mirrored pairs: a few contexts, but no side left out
    contexts = draw * torch.as_tensor(spread, dtype=torch.float32) * CONTEXT_SD
    contexts[:, jaw] = 0.0
    return contexts


def pitched_contexts(contexts: torch.Tensor, spread, pitch: int | None) -> torch.Tensor:
    """[2N, K]: contexts [N, K] with their pitch at minus, then plus, G's pitch bound (PITCH_REACH sds)."""
    if not len(contexts) or pitch is None:
        return torch.zeros(0, contexts.shape[1])
    bound = PITCH_REACH * float(spread[pitch])
    out = torch.cat([contexts, contexts])
    out[:len(contexts), pitch] = -bound
    out[len(contexts):, pitch] = bound
    return out


@dataclass
class JawPitch:
    """The jaw's mean curves in the jaw contexts pitched to -bound and to +bound (pitched_contexts); a
    side whose curve was not kept (too few faces, or hardly opening) is None."""
    bound: float                          # G's pitch bound (normalised units)
    curves: tuple                         # (pitched -bound, +bound): (steps, response) or None

    def step(self, step: float, near_step: float, request: float, pitch: float) -> float:
        """The step of an opening `request` (`step`, from near_step on the mean curve) with the head
        pitched `pitch`: scaled by the pitched curve's step over the mean curve's, weighted by the
        share of the bound pitched, and no further than the pitched sweep's end where it lies beyond
        `step` (steps past every sweep were never rendered); as it is where that side has no curve."""
        curve = self.curves[int(pitch > 0)]
        if curve is None or pitch == 0.0:
            return step
        t, r = curve
        w = min(abs(pitch) / self.bound, 1.0)
        scaled = step * (1.0 + w * (float(np.interp(request, r, t)) / near_step - 1.0))
        return min(scaled, max(step, float(t[-1])))


def shared_curve(t: np.ndarray, responses: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The response curve of the jaw contexts' mean response along t; None when under FAR_MIN_SHARE of
    them showed a face (responses holds those that did) or it hardly opens."""
    if len(responses) < FAR_MIN_SHARE * JAW_CONTEXTS:
        return None
    return response_curve(*seen_stretch(t, chained_mean(responses, int(np.argmin(np.abs(t))))))


def jaw_pitch(t: np.ndarray, sides: list[list[np.ndarray]], bound: float) -> JawPitch | None:
    """The JawPitch of the jaw contexts' responses along t pitched to -bound and +bound (sides); a
    side keeps a curve where FAR_MIN_SHARE of its contexts showed a face; None when neither does."""
    curves = [shared_curve(t, responses) for responses in sides]
    return JawPitch(abs(bound), tuple(curves)) if bound and any(c is not None for c in curves) else None


OCTANTS = [(y, p, r) for y in (-1, 1) for p in (-1, 1) for r in (-1, 1)]
_CORNERS = torch.tensor(OCTANTS, dtype=torch.float32)                   # [8, 3] of +-1


def reach_probes(spread, k: int, jaw: int | None) -> torch.Tensor:
    """[S x 8 x len(REACH_PROBES), K] requests along the diagonals of (yaw, pitch, roll), in sds, at
    each probe radius, the expressions at rest; then (S = 2, with a jaw) the same with the jaw opening
    as far as each angle moves, at the same radius in all four: set after set, octant after octant
    (OCTANTS), radius after radius."""
    sd = torch.as_tensor(spread, dtype=torch.float32)
    rows = []
    for opening in (False, True) if jaw is not None else (False,):
        for corner in OCTANTS:
            for radius in REACH_PROBES:
                dp = torch.zeros(k)
                direction = torch.tensor([*corner, 1.0] if opening else corner, dtype=torch.float32)
                step = direction / direction.norm() * radius
                dp[:3] = step[:3] * sd[:3]
                if opening:
                    dp[jaw] = step[3] * sd[jaw]
                rows.append(dp)
    return torch.stack(rows)


def octant_reach(held: list[bool]) -> torch.Tensor:
    """[8]: per octant, the largest probe radius up to which every probe of each set kept a face (REACH
    when all did, ANGLE_FLOOR when the first did not), from reach_probes' renders."""
    n = len(REACH_PROBES)
    by_first_lost = (ANGLE_FLOOR, *REACH_PROBES[:-1], REACH)   # the reach when probe i is the first lost
    reach = []
    for i in range(len(held) // n):
        kept = held[i * n:(i + 1) * n]
        reach.append(by_first_lost[kept.index(False) if False in kept else n])
    return torch.tensor(reach).view(-1, len(OCTANTS)).min(dim=0).values


def at_reach(contexts: torch.Tensor, spread) -> torch.Tensor:
    """contexts [N, K] with their angles scaled along their own direction to REACH sds from rest."""
    if not len(contexts):
        return contexts
    radius = angle_radius(contexts, torch.as_tensor(spread, dtype=torch.float32)[:3])
    out = contexts.clone()
    out[:, :3] *= REACH / radius.clamp(min=1e-6)[:, None]
    return out


def _jaw_far(jaw: int, t: np.ndarray, responses: list[np.ndarray], far: torch.Tensor, near: torch.Tensor,
             spread) -> JawFar | None:
    """The far contexts' mean jaw curve, placed by the mean angle radius of the near curve's members (its
    rest counted at 0) and of the far contexts that showed a face; None when under FAR_MIN_SHARE of
    them did or it hardly opens."""
    curve = shared_curve(t, responses)
    sd = torch.as_tensor(spread, dtype=torch.float32)[:3]
    near_radius = float(torch.cat([torch.zeros(1), angle_radius(near, sd)]).mean())   # rest at 0
    far_radius = float(angle_radius(far, sd).mean()) if len(far) else 0.0
    if curve is None or far_radius <= near_radius:
        return None
    return JawFar(jaw, near_radius, far_radius, curve, sd)


def angle_radius(dp: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """How far the head angles of requests dp [..., K] lie from rest, in sds [3] (the norm over the last axis)."""
    return (dp[..., :3] / sd).norm(dim=-1)


def _normalised(A, faces: list) -> np.ndarray:
    """Net3D readings -> their normalised parameters [N, K] (a row of nan where a render showed no face)."""
    missing = np.full(A.k, np.nan)
    raw = np.stack([missing if f is None else f.p for f in faces])
    return A.normalise(torch.as_tensor(raw, dtype=torch.float32)).numpy()


def seen_stretch(t: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The steps of a sweep around t = 0 up to the first render either side that showed no face: a
    turn too far for this avatar ends its curve there (requests beyond clamp at it) instead of
    costing the avatar its whole correction."""
    seen = np.isfinite(r)
    lo = hi = int(np.argmin(np.abs(t)))   # t = 0: the rest render, which showed a face
    while lo > 0 and seen[lo - 1]:
        lo -= 1
    while hi + 1 < len(t) and seen[hi + 1]:
        hi += 1
    return t[lo:hi + 1], r[lo:hi + 1]


def head_drift(minus: np.ndarray, far_minus: np.ndarray, plus: np.ndarray, far_plus: np.ndarray,
               step: float, probe: float) -> torch.Tensor:
    """[2, 3, M]: the head-angle change per unit step of each expression sense (- then +), signed to
    cancel it, from its changes [M, 3] at `step` and `probe`: a least-squares slope through rest over
    both steps, kept only where the probe moved the angle at least DRIFT_FLOOR and both steps agree
    in sign. A reading of a 64-px render jitters by ~0.1-0.2 units; cancelling that on every
    expression swung the head by more than the driver turned it (Biden at 96 px: yaw r 0.74)."""
    def slope(near, far):
        fit = (step * near + probe * far) / (step ** 2 + probe ** 2)
        real = (np.abs(far) >= DRIFT_FLOOR) & (np.sign(near) == np.sign(far))
        return np.where(real, fit, 0.0).T   # nan (no face) compares False: nothing cancelled
    return torch.as_tensor(np.stack([slope(minus, far_minus), -slope(plus, far_plus)]), dtype=torch.float32)


@dataclass
class SeenTwice:
    """The mean of one render's readings in the Net3D view and in the published frame."""
    p: np.ndarray


def seen_twice(view, shown):
    """A render's reading in the view and in the published frame (either None: no face there) -> their
    mean; the view's reading alone where the published frame shows no face, and no face where the view
    shows none (the sweeps end where the view loses the face, as they did read there alone)."""
    if view is None or shown is None:
        return view
    return SeenTwice((np.asarray(view.p, np.float64) + np.asarray(shown.p, np.float64)) / 2)


class _Readings:
    """The reader's faces on the avatar's renders of requests dp, kept by request, so that measuring
    again with a longer jaw sweep renders and reads only the requests not read before."""

    def __init__(self, render: Callable[[torch.Tensor], torch.Tensor], open_reader: Callable, publish=None):
        self.render, self.open_reader, self.publish, self.faces = render, open_reader, publish, {}

    def __call__(self, dps: torch.Tensor) -> list:
        keys = [tuple(row.tolist()) for row in dps]
        new = [i for i, key in enumerate(keys) if key not in self.faces]
        if new:
            imgs = self.render(dps[new])
            if self.publish is None:
                faces = self._read(imgs, _view)
            else:   # two readers at once: each runs its native code on its own thread, out of the GIL
                with ThreadPoolExecutor(1, thread_name_prefix="correction-read") as pool:
                    shown = pool.submit(self._read, imgs, self.publish)
                    faces = [seen_twice(v, s) for v, s in zip(self._read(imgs, _view), shown.result())]
            self.faces.update((keys[i], face) for i, face in zip(new, faces))
        return [self.faces[key] for key in keys]

    def _read(self, imgs: torch.Tensor, frames: Callable) -> list:
        """A new reader's faces on frames(chunk) of imgs, a few at a time: the ~330 upsampled views at
        once (260 MB) took twice as long to make."""
        with self.open_reader() as reader:
            return [reader.read(a) for chunk in imgs.split(8) for a in frames(chunk)]


def _view(renders: torch.Tensor) -> np.ndarray:
    return to_uint8(net3d_view(renders))


def _sweep(context: torch.Tensor, i: int, ts: np.ndarray) -> torch.Tensor:
    rows = context.repeat(len(ts), 1)
    rows[:, i] += torch.as_tensor(ts, dtype=torch.float32)
    return rows


def _context_responses(A, faces: list, jaw: int, t: np.ndarray, n: int,
                       whole_to: float) -> tuple[list[int], list[np.ndarray]]:
    """(which contexts were kept, the jaw's response along t in each) of n contexts (faces: their
    readings, sweep after sweep), from the sweep's own rest. A context where a render up to step
    `whole_to` (the usual sweep's end) shows no face is left out; one that loses its face only in a
    longer sweep (late_end) counts up to there (nan after)."""
    rest, kept, out = int(np.argmin(np.abs(t))), [], []
    for c in range(n):
        p = _normalised(A, faces[c * len(t):(c + 1) * len(t)])[:, jaw]
        if not np.isfinite(p[t <= whole_to]).all():
            continue
        r = p - p[rest]
        lost = np.flatnonzero(~np.isfinite(r))
        if len(lost):
            r[lost[0]:] = np.nan
        kept.append(c)
        out.append(r)
    return kept, out


def chained_mean(responses: list[np.ndarray], rest: int) -> np.ndarray:
    """The mean of responses along one sweep (each 0 at index `rest`, nan past where its renders lost
    the face), built outward from rest: each step adds the mean change over that step of the responses
    seen at both its ends, so a jaw read on past the usual sweep (late_end) keeps the curve read up to
    its end. With the contexts that lose their face in the longer sweep left out whole, a grey
    astronaut's far jaw read 2.05 units at step 5 against 1.39 in the usual sweep (her wide-mouth
    clip's jawOpen r 0.67 -> 0.54 when her sweep was first run on to 14); nan past where none is seen."""
    r = np.stack(responses)
    out = np.full(r.shape[1], np.nan)
    out[rest] = 0.0
    for a, b in [(j, j + 1) for j in range(rest, r.shape[1] - 1)] + [(j, j - 1) for j in range(rest, 0, -1)]:
        d = r[:, b] - r[:, a]
        if np.isfinite(out[a]) and np.isfinite(d).any():
            out[b] = out[a] + float(np.nanmean(d))
    return out


def within_reach(dp: torch.Tensor, sd: torch.Tensor, jaw: int | None, reach: float = REACH,
                 room: float | None = None) -> torch.Tensor:
    """dp [K] (normalised requests) with its angles pulled toward 0, direction kept, so that angles and
    an opening jaw together stay within `reach` standard deviations `sd` [K] of the tuned requests.
    The jaw's step counts as a distance, in sds, like an angle's; room: how far (sds) this avatar's
    jaw curves say the angles may reach with the jaw as it is asked to open (JawFar.room), where that
    is further."""
    opening = max(float(dp[jaw]), 0.0) / float(sd[jaw]) if jaw is not None else 0.0
    allowed = max(max(reach ** 2 - opening ** 2, 0.0) ** 0.5, room or 0.0)
    budget = max(min(reach, allowed), min(ANGLE_FLOOR, reach))
    m = float(angle_radius(dp, sd[:3]))
    start = KNEE * budget
    if m <= start:
        return dp
    out = dp.clone()
    out[:3] *= (start + (budget - start) * np.tanh((m - start) / (budget - start))) / m
    return out
