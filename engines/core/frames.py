"""Decoded video frames as their file means them to be shown, and the one loop that reads a clip."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.core.errors import UserError

if TYPE_CHECKING:
    import av


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


def _opened(clip: Path, label: str) -> av.container.InputContainer:
    import av      # here, not above: the GPU benchmark machine reads frames from .npz, without PyAV
    try:
        c = av.open(str(clip))
    except (av.FFmpegError, OSError) as e:
        raise UserError(f"{label}{clip}: not a video file ({e})") from None
    if not c.streams.video:
        c.close()
        raise UserError(f"{label}{clip}: no video stream")
    return c


def decoded(clip: Path, max_frames: int | None = None, label: str = "") -> Iterator[tuple[int, float, av.VideoFrame]]:
    """(index, media time in s, av.VideoFrame) for each frame of a clip's first video stream, stored
    as decoded (frame_rgb shows it). A file that is not a video, or has none, is a UserError naming
    it after `label` (the flag it came from, e.g. "--clips ")."""
    import av
    with _opened(clip, label) as c:
        s = c.streams.video[0]
        rate = float(s.average_rate or 30)
        try:
            for i, f in enumerate(c.decode(s)):
                if max_frames and i >= max_frames:
                    return
                yield i, (f.time if f.time is not None else i / rate), f
        except av.FFmpegError as e:
            raise UserError(f"{label}{clip}: cannot decode it ({e})") from None


def clip_rgb(clip: Path, max_frames: int | None = None, label: str = "") -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, media time in s, RGB uint8) for each frame of a clip, upright as it is shown."""
    for i, t, f in decoded(clip, max_frames, label):
        yield i, t, frame_rgb(f)


def clip_frame(clip: Path, index: int, label: str = "") -> np.ndarray:
    """Frame `index` of a clip as RGB uint8, upright; a UserError when the clip is shorter."""
    rgb = next((rgb for i, _, rgb in clip_rgb(clip, index + 1, label) if i == index), None)
    if rgb is None:
        raise UserError(f"{label}{clip} has no frame {index}")
    return rgb


def frame_count(clip: Path, label: str = "") -> int:
    """The clip's frame count from its header; 0 where the container does not say."""
    with _opened(clip, label) as c:
        return c.streams.video[0].frames or 0


def frame_rate(clip: Path, label: str = "") -> float:
    """The clip's average frame rate; 30 where the container does not say."""
    with _opened(clip, label) as c:
        return float(c.streams.video[0].average_rate or 30)
