"""One session's motion state: driving pose p -> the normalised change dp the avatar is asked for.

Motion is relative by default: dp = p_t - p_ref with p_ref the driver's neutral reference (first frame
with a face; `reset` re-takes it), applied on top of the avatar's own pose, so the avatar starts from
its own expression and a driver whose neutral face is not the avatar's still drives it correctly. The
target p_avatar + dp is clamped to the range calibration saw (plus a tenth either way). Absolute mode
is the paper's formula dp = p_driver - p_avatar. Frames with no face hold the last pose for `hold_s`,
then ease back to the avatar's neutral pose.
"""
from __future__ import annotations

import numpy as np
import torch

from streamer.reenact.smoothing import OneEuro

EASE_FRAME_S = 1 / 30   # easing runs per frame without a face, at a nominal 30 fps


class Motion:
    def __init__(self, A, p_avatar: np.ndarray, *, relative: bool = True, smooth: bool = True,
                 hold_s: float = 1.0, ease_s: float = 0.5):
        self.A, self.relative, self.hold_s, self.ease_s = A, relative, hold_s, ease_s
        k = A.k
        self.p_avatar = torch.as_tensor(p_avatar, dtype=torch.float32)
        span = A.hi - A.lo
        self.p_min, self.p_max = A.lo - 0.1 * span, A.hi + 0.1 * span
        # angles jitter by ~0.5 deg and blendshapes by ~0.02 frame to frame: One-Euro per parameter.
        # beta is per unit of speed: angles move tens of degrees/s, blendshapes a few units/s, so theirs
        # is larger, or speech (jawOpen) lags and its correlation with the driver drops (0.58 -> 0.66);
        # the jaw, fastest of all, also gets a higher cutoff (selfie jawOpen r 0.958 -> 0.974)
        self.filter = OneEuro(min_cutoff=np.r_[[1.2] * 3, [4.0], [2.0] * (k - 4)],
                              beta=np.r_[[0.3] * 3, [5.0] * (k - 3)]) if smooth else None
        self.p_ref: torch.Tensor | None = None
        self.dp = torch.zeros(k)
        self.last_face_t: float | None = None

    def reset(self) -> None:
        """Take the next frame with a face as the driver's neutral reference."""
        self.p_ref = None
        if self.filter is not None:
            self.filter.reset()

    def update(self, p: np.ndarray | None, now: float) -> float | None:
        """A Net3D reading's p (None: no face) at media time `now` -> updates self.dp. Returns the
        easing factor applied this frame (None when the pose was not eased)."""
        if p is None:
            if self.last_face_t is not None and now - self.last_face_t > self.hold_s:
                ease = float(np.exp(-EASE_FRAME_S / self.ease_s))  # ease toward neutral
                self.dp = self.dp * ease
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
            target = self.p_avatar + (p - self.p_ref)
        else:
            target = p
        target = torch.maximum(torch.minimum(target, self.p_max), self.p_min)
        self.dp = self.A.normalise(target) - self.A.normalise(self.p_avatar)
        return None
