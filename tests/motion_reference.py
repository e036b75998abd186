"""Closed form of the head angles' reference the motion state follows (streamer.reenact.motion.UsualPose),
written out independently for the tests that predict the avatar's requests."""
from __future__ import annotations

import numpy as np


def usual_reference(values, times, window: float = 30.0, lag: float = 1.0) -> np.ndarray:
    """One angle's reference at each reading: the first reading, then gliding with time constant `lag`
    toward the median of the readings of the last `window` seconds."""
    ref = [values[0]]
    for i in range(1, len(values)):
        seen = [v for v, t in zip(values[:i + 1], times[:i + 1]) if times[i] - window <= t <= times[i]]
        ref.append(ref[-1] + (1 - np.exp(-(times[i] - times[i - 1]) / lag)) * (np.median(seen) - ref[-1]))
    return np.array(ref)
