"""Decoded video frames as their file means them to be shown."""
from __future__ import annotations

import numpy as np


def frame_rgb(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded av.VideoFrame -> RGB uint8 H x W x 3, turned by the rotation of its display matrix.
    A phone stores a portrait clip as landscape frames marked -90 degrees: decoded as stored, the
    driver's face lies on its side, in the side-by-side view too, and MediaPipe reads it less well (the
    selfie clip stored so: yaw sd 1.8 degrees against 0.9 upright, jawOpen sd 0.10 against 0.12).
    size: (width, height) of the frame as shown, when it must be resized."""
    turns = round((frame.rotation or 0) / 90) % 4     # counter-clockwise quarter turns, as np.rot90
    if size is not None:
        w, h = size if turns % 2 == 0 else size[::-1]
        if (frame.width, frame.height) != (w, h):
            frame = frame.reformat(width=w, height=h)
    rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
