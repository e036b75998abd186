"""Per-avatar response correction (beyond the paper), measured once per avatar on its own renders.

A is one linear map for all faces, but how far a direction moves *this* avatar varies by face, is often
asymmetric (one avatar turns right easily and left hardly), and directions can move the head instead of
doing their job (on some avatars a blink direction turns the head, and a smile direction cannot widen a
smile that is already full). Read by the Net3D runtime on calibration's view:
  * for yaw, pitch, roll and jawOpen, the response curve p_i(t) along direction i (SWEEPS), kept from
    its low to its peak (response_curve) and used inverted: the requested change is mapped to the t
    that produces it (a mouth shows little below some opening and then opens fast: without its curve
    small speech movements vanish);
  * for each other expression direction and each sense (+/-): whether a step of `probe` moves its own
    parameter that way by at least GATE_MIN (normalised units) and GATE_RAW (its own units); a sense
    that does not is switched off for this avatar, since all it can add is cross-talk;
  * the head-pose drift of each expression direction, one-sided differences at +/-`step`, cancelled by
    asking the pose directions for the opposite change.
The reenactor applies it to every request; enrollment-time tuning of A (calibration.avatar_directions)
uses the same gate to keep the expression columns that still work.
"""
from __future__ import annotations

from dataclasses import dataclass
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
# steps (normalised units) at which the correction reads each curved parameter's response: the angles
# either way; jawOpen mostly opening (a closed mouth cannot close much further)
SWEEPS = {"yaw": range(-5, 6), "pitch": range(-5, 6), "roll": range(-5, 6), "jawOpen": range(-4, 11)}
# how far (in standard deviations of the requests the avatar's G was tuned on) a frame's head angles and
# its opening jaw may reach together: past it a turned, tilted head with an open mouth is a combination G
# never saw, and the mouth stays shut (Mona Lisa mirrored, widemouth clip: jawOpen r 0.51). The angles
# give way, smoothly from KNEE of the reach; they keep at least ANGLE_FLOOR sds.
REACH = 3.0
KNEE = 0.8
ANGLE_FLOOR = 1.5


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
    if top == z or r[-1] - r[0] < 0.5:
        return None
    r = np.maximum.accumulate(r)
    r = np.concatenate([[0.0], np.cumsum(np.maximum(np.diff(r), 0.05 * np.diff(t)))])
    return t, r - np.interp(0.0, t, r)


def gate_thresholds(A) -> np.ndarray:
    """[K-3]: the response (normalised units) each expression sense must reach to stay on."""
    span = (A.hi - A.lo).numpy()[3:]
    return np.maximum(GATE_MIN, GATE_RAW / span * 2 * A.shift_scale)


@dataclass
class Correction:
    curves: dict[int, tuple[np.ndarray, np.ndarray]]   # parameter -> (steps t, monotone response)
    drift: torch.Tensor      # [2, 3, K-3]: head-angle drift per unit of each expression, - and + senses
    gates: torch.Tensor      # [2, K-3] bool: which senses of each expression move this avatar
    # (sd [K] of the requests G was tuned on, jawOpen's index) for within_reach, or None: no limit
    reach: tuple[torch.Tensor, int | None] | None = None

    @classmethod
    @torch.no_grad()
    def measure(cls, A, render: Callable[[torch.Tensor], torch.Tensor], step: float = 2.0,
                probe: float = 4.0, spread=None, image_reader=None) -> "Correction | None":
        """render: requests dp [N, K] -> the avatar's images [N, 3, R, R] in [-1, 1] on the CPU;
        spread: [K] sd of the requests the avatar was tuned on (its pack's record; None: no reach limit);
        image_reader: () -> a Net3D reader of single images (default: MediaPipe's runtime, image mode).
        None when a render shows no face."""
        k = A.k
        m = k - 3
        swept = {A.param_names.index(n): np.asarray(ts, np.float64) for n, ts in SWEEPS.items()}
        sweeps = []
        for i, ts in swept.items():
            rows = torch.zeros(len(ts), k)
            rows[:, i] = torch.as_tensor(ts, dtype=torch.float32)
            sweeps.append(rows)
        e = torch.eye(k)[3:]
        dps = torch.cat([torch.zeros(1, k), *sweeps, e * step, -e * step, e * probe, -e * probe])
        imgs = render(dps)
        with (image_reader or (lambda: MediaPipeNet3D("image")))() as reader:
            faces = [reader.read(a) for a in to_uint8(net3d_view(imgs))]
        if any(f is None for f in faces):
            return None
        p = A.normalise(torch.as_tensor(np.stack([f.p for f in faces]), dtype=torch.float32)).numpy()
        p0, at = p[0], 1
        curves = {}
        for i, t in swept.items():
            curve = response_curve(t, p[at:at + len(t), i] - p0[i])
            at += len(t)
            if curve is not None:
                curves[i] = curve
        plus, minus = p[at:at + m] - p0, p[at + m:at + 2 * m] - p0
        far_plus, far_minus = p[at + 2 * m:at + 3 * m] - p0, p[at + 3 * m:] - p0
        own = np.arange(m), np.arange(3, k)
        gate = gate_thresholds(A)
        gates = np.stack([far_minus[own] <= -gate, far_plus[own] >= gate])
        for i in curves:
            if i >= 3:   # an expression with a curve: the curve decides how it moves
                gates[:, i - 3] = True
        # drift in response units (normalised p per unit step): __call__ adds it to the requested angle
        # change before the curve inversion turns responses into steps
        drift = np.stack([minus[:, :3].T / step, -plus[:, :3].T / step])   # [-sense, +sense]
        names = list(A.param_names)
        reach = None if spread is None or len(spread) != k else \
            (torch.as_tensor(spread, dtype=torch.float32), names.index("jawOpen") if "jawOpen" in names else None)
        return cls(curves, torch.as_tensor(drift, dtype=torch.float32), torch.as_tensor(gates), reach)

    def __call__(self, dp: torch.Tensor) -> torch.Tensor:
        """A requested change dp [K] (normalised) -> the request that shows it on this avatar."""
        out = dp.clone()
        ex = out[3:]
        ex[~(self.gates[1] | (ex <= 0))] = 0.0           # senses that do not move this avatar: off
        ex[~(self.gates[0] | (ex >= 0))] = 0.0
        out[:3] = out[:3] + self.drift[0] @ ex.clamp(max=0) + self.drift[1] @ ex.clamp(min=0)
        for i, (t, r) in self.curves.items():
            if float(out[i]) != 0.0:  # no change requested stays no change
                out[i] = float(np.interp(float(out[i]), r, t))  # clamps to the measured range
        return out if self.reach is None else within_reach(out, *self.reach)


def within_reach(dp: torch.Tensor, sd: torch.Tensor, jaw: int | None) -> torch.Tensor:
    """dp [K] (normalised requests) with its angles pulled toward 0, direction kept, so that angles and
    an opening jaw together stay within REACH standard deviations `sd` [K] of the tuned requests."""
    opening = max(float(dp[jaw]), 0.0) / float(sd[jaw]) if jaw is not None else 0.0
    budget = max(REACH ** 2 - opening ** 2, ANGLE_FLOOR ** 2) ** 0.5
    m = float((dp[:3] / sd[:3]).norm())
    start = KNEE * budget
    if m <= start:
        return dp
    out = dp.clone()
    out[:3] *= (start + (budget - start) * np.tanh((m - start) / (budget - start))) / m
    return out
