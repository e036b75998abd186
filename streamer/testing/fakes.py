"""Stand-in reenactors with the `streamer.reenact.api.Reenactor` shape, for tests and the streaming benchmark.

FakeReenactor's output is a closed-form function of its input, so a test can check every published
frame: colours inverted, and a 32x32 marker block in the top-right corner whose colour identifies the
avatar (so several peers with different avatars can be told apart after video compression).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from streamer.reenact.api import Output

MARK = 32   # marker block side, pixels


def avatar_color(avatar) -> tuple[int, int, int]:
    """A saturated colour derived from the avatar file's bytes (or a fixed one for no avatar)."""
    if avatar is None:
        return (255, 0, 255)
    digest = hashlib.sha256(Path(avatar).read_bytes()).digest()
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    return palette[digest[0] % len(palette)]


def expected_output(image: np.ndarray, color, side_by_side: bool = False) -> np.ndarray:
    out = 255 - image
    out[:MARK, -MARK:] = color
    return np.concatenate([image, out], axis=1) if side_by_side else out


class FakeReenactor:
    """invert + avatar marker. delay_s: sleep per frame (a slow engine); fail_every: raise on every
    n-th frame (a crashing engine). A frame whose mean is below 8 counts as 'no face'."""

    def __init__(self, avatar=None, *, delay_s: float = 0.0, fail_every: int | None = None):
        self.avatar = avatar
        self.color = avatar_color(avatar)
        self.delay_s, self.fail_every = delay_s, fail_every
        self.side_by_side = False
        self.calls = 0
        self.resets = 0
        self.seen_shapes: set = set()

    def process(self, image: np.ndarray, t: float | None = None) -> Output:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError(f"fake failure on frame {self.calls}")
        self.seen_shapes.add(image.shape)
        t0 = time.perf_counter()
        found = float(image.mean()) >= 8.0
        t1 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        out = expected_output(image, self.color, self.side_by_side)
        t2 = time.perf_counter()
        return Output(out, found, {"face": (t1 - t0) * 1e3, "pose": 0.0, "latent": 0.0,
                                   "image": (t2 - t1) * 1e3})

    def reset_reference(self) -> None:
        self.resets += 1


def make_fake_reenactor(avatar=None) -> FakeReenactor:
    """The factory shape run_live expects: make_reenactor(avatar) -> Reenactor."""
    return FakeReenactor(avatar)
