"""A run-time check of every rendered avatar frame: show the last good frame rather than a broken one.

The avatar's own render at zero motion is the reference. A frame whose mean colour moves more than
`colour_limit` grey levels from it in any channel, or whose fine texture (mean |Laplacian|) grows past
`texture_limit` times the reference's, is no longer this avatar: a request pushed the generator out of
its range, a damaged pack, a device error. The previous good frame is published instead, and counted
(the status line's `held`). On the widened test set no frame came near either limit
(docs/reenactment.md), so the guard costs nothing but ~0.1 ms where the avatar holds together.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOUR_LIMIT = 40.0     # grey levels (0..255) of mean-colour change
TEXTURE_LIMIT = 2.5     # times the reference's fine texture

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def frame_stats(img: torch.Tensor) -> tuple[torch.Tensor, float]:
    """[1,3,R,R] in [-1,1] -> (mean colour [3] in grey levels, mean |Laplacian| in grey levels)."""
    x = (img.float().clamp(-1, 1) + 1) * 127.5
    lap = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), _LAPLACE)
    return x.mean((0, 2, 3)), float(lap.abs().mean())


class OutputGuard:
    def __init__(self, reference: torch.Tensor, colour_limit: float = COLOUR_LIMIT,
                 texture_limit: float = TEXTURE_LIMIT):
        self.colour, self.texture = frame_stats(reference)
        self.colour_limit, self.texture_limit = colour_limit, texture_limit
        self.last_good = reference
        self.held = 0

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """The frame to publish: `img` when it holds together, else the last one that did."""
        colour, texture = frame_stats(img)
        if (not torch.isfinite(img).all() or float((colour - self.colour).abs().max()) > self.colour_limit
                or texture > self.texture_limit * self.texture):
            self.held += 1
            return self.last_good
        self.last_good = img
        return img
