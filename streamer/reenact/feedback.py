"""Head-pose feedback (beyond the paper; `run_stream --feedback N`, off by default).

Every Nth frame Net3D reads the avatar's own output, and the difference between the head angles asked
for and the ones shown is integrated into the request, so a face that turns less (or more) than A
predicts still ends where the driver is. It only scales the three angle directions A already has, so it
cannot invent pixels. The reenactor pauses it while the driver shows no face (the held pose stays
exactly) and eases it out with the pose.
"""
from __future__ import annotations

import torch

from engines.core.views import net3d_view, to_uint8
from engines.method.net3d import MediaPipeNet3D

FEEDBACK_GAIN = 0.7   # share of the angle error integrated per reading (every 3rd frame: ~0.25/frame)
FEEDBACK_LIMIT = 3.0  # the integral stays within +-3 normalised units (a quarter of each angle's range)


class HeadFeedback:
    """The integral of one session's head-angle error, read on calibration's view."""

    def __init__(self, A, reader: MediaPipeNet3D, p0: torch.Tensor, every: int):
        self.A, self.reader, self.p0, self.every = A, reader, p0, every
        self.integral = torch.zeros(3)

    @classmethod
    def start(cls, A, avatar_render: torch.Tensor, every: int, image_reader=None) -> "HeadFeedback | None":
        """None when off or when Net3D finds no face in the avatar's own render [1,3,R,R].
        image_reader: () -> a Net3D reader of single images (default: MediaPipe's runtime)."""
        if every <= 0:
            return None
        # image mode: each output frame on its own, no tracking lag
        reader = image_reader() if image_reader is not None else MediaPipeNet3D("image")
        p0 = read_angles(A, reader, avatar_render)
        if p0 is None:
            reader.close()
            return None
        return cls(A, reader, p0, int(every))

    def update(self, frame: int, asked: torch.Tensor, render: torch.Tensor) -> None:
        """Integrate the angle error of the frame just rendered (dp asked vs the change shown)."""
        if frame % self.every:
            return
        shown = read_angles(self.A, self.reader, render)
        if shown is None:   # output not readable this frame: keep the integral as it is
            return
        err = asked[:3] - (shown - self.p0)
        self.integral = (self.integral + FEEDBACK_GAIN * err).clamp(-FEEDBACK_LIMIT, FEEDBACK_LIMIT)

    def ease(self, factor: float) -> None:
        self.integral = self.integral * factor   # neutral is the avatar itself

    def close(self) -> None:
        self.reader.close()


def read_angles(A, reader, small: torch.Tensor) -> torch.Tensor | None:
    """Normalised head angles of a generator output [1,3,R,R], read on calibration's view."""
    face = reader.read(to_uint8(net3d_view(small))[0])
    if face is None:
        return None
    return A.normalise(torch.as_tensor(face.p, dtype=torch.float32))[:3]
