"""One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) for pose vectors and crop boxes.

A low-pass filter whose cutoff rises with speed: still faces stop jittering, fast motion keeps little
lag. cutoff = min_cutoff + beta * |filtered derivative|; alpha = 1 / (1 + tau / dt), tau = 1/(2 pi fc).
"""
from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff, dt: float):
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuro:
    def __init__(self, min_cutoff=1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff = np.asarray(min_cutoff, dtype=np.float64)
        self.beta, self.d_cutoff = beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x = None
        self._dx = None
        self._t = None

    def __call__(self, x, t: float) -> np.ndarray:
        """Filter sample x (any shape) taken at time t (seconds, increasing)."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = _alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        a = _alpha(self.min_cutoff + self.beta * np.abs(self._dx), dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()
