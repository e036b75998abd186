"""The contract between the streaming pipeline and the reenactment engine.

A `Reenactor` is one session's avatar: it turns one driving frame into one output frame. The pipeline
(capture, queues, sinks, WebRTC) knows nothing else about the models, so it can be tested with any
object that has this shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Output:
    image: np.ndarray              # H x W x 3 uint8 RGB, the frame to publish
    face_found: bool               # False when the driver showed no face (last pose held / eased)
    stage_ms: dict[str, float] = field(default_factory=dict)  # per-stage wall time: face, pose, latent, image
    held: bool = False             # the render did not hold together; the last good one is shown
    pose: np.ndarray | None = None  # the pose vector p Net3D read from the driver (None: no face)


class Reenactor(Protocol):
    side_by_side: bool

    def process(self, image: np.ndarray, t: float | None = None) -> Output:
        """image: H x W x 3 uint8 RGB driving frame -> Output. Must not keep a reference to `image`.
        t: the frame's media time in seconds (files processed faster or slower than real time);
        None = now (live sources)."""

    def reset_reference(self) -> None:
        """Take the next frame with a face as the driver's neutral reference."""
