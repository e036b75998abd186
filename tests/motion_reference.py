"""Closed forms of the references the motion state follows (streamer.reenact.motion.Recent): where the
head usually is, and how wide the mouth opens when it opens wide; written out independently for the
tests that predict the avatar's requests."""
from __future__ import annotations

import numpy as np


def recent_reference(values, times, statistic, window: float = 30.0, lag: float = 1.0) -> np.ndarray:
    """A statistic of one parameter's readings at each reading: the first reading, then gliding with time
    constant `lag` toward the statistic of the readings of the last `window` seconds."""
    ref = [values[0]]
    for i in range(1, len(values)):
        seen = [v for v, t in zip(values[:i + 1], times[:i + 1]) if times[i] - window <= t <= times[i]]
        ref.append(ref[-1] + (1 - np.exp(-(times[i] - times[i - 1]) / lag)) * (statistic(seen) - ref[-1]))
    return np.array(ref)


def usual_reference(values, times, window: float = 30.0, lag: float = 1.0) -> np.ndarray:
    """One angle's reference: the median of its recent readings, gliding."""
    return recent_reference(values, times, np.median, window, lag)


def wide_reference(openings, times, window: float = 30.0, lag: float = 1.0) -> np.ndarray:
    """How wide the mouth opens when it opens wide: the 95th percentile of its recent openings, gliding."""
    return recent_reference(openings, times, lambda seen: np.percentile(seen, 95), window, lag)
