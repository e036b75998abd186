"""Video sources (webcam, file, lavfi test pattern) and the capture thread that feeds a pipeline.

The capture thread reads as fast as the source delivers and hands each frame to the event loop, where
a size-1 lossy channel keeps only the newest: stale frames are the main latency source of a webcam
filter. A source that fails mid-stream is reopened with exponential backoff while `status` says so.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engines.core.errors import UserError
from engines.core.frames import frame_rgb
from streamer.stream.pipeline import Channel, Frame


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like 640x480, got {text!r}") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320):
        raise UserError(f"--size {text} is out of range (16x16 .. 7680x4320)")
    return w, h


@dataclass
class SourceSpec:
    """Everything needed to (re)open one source."""
    kind: str                      # 'camera' | 'file' | 'lavfi'
    url: str
    fmt: str | None = None         # PyAV/ffmpeg input format (v4l2, avfoundation, dshow, lavfi)
    options: dict = field(default_factory=dict)
    pace: bool = False             # sleep to the frame timestamps (files and lavfi; cameras pace themselves)
    loop: bool = False             # restart a file at its end
    size: tuple[int, int] | None = None   # rescale to (w, h) if given

    @property
    def label(self) -> str:
        return f"{self.kind} {self.url}"


def camera_spec(device: str, size: tuple[int, int] | None, fps: float, mjpeg: bool) -> SourceSpec:
    """A webcam: a /dev/video path or index on Linux (v4l2), an index on macOS, video=NAME on Windows."""
    size = size or (640, 480)
    opts = {"video_size": f"{size[0]}x{size[1]}", "framerate": f"{fps:g}"}
    system = platform.system()
    if system == "Darwin":
        return SourceSpec("camera", device, "avfoundation", opts, size=size)
    if system == "Windows":
        name = device if device.startswith("video=") else f"video={device}"
        return SourceSpec("camera", name, "dshow", opts, size=size)
    path = f"/dev/video{device}" if device.isdigit() else device
    if mjpeg:
        opts["input_format"] = "mjpeg"   # most USB webcams deliver 30 fps at 640x480+ only as MJPEG
    if not os.path.exists(path):
        found = sorted(p.name for p in Path("/dev").glob("video*"))
        have = f"devices here: {', '.join(found)}" if found else "this machine has no /dev/video* devices"
        raise UserError(f"no camera at {path} ({have}); plug one in, or use --source FILE.mp4 or "
                        f"--source lavfi:testsrc2")
    return SourceSpec("camera", path, "v4l2", opts, size=size)


def parse_source(text: str, *, size=None, fps: float = 30.0, mjpeg: bool = False, live: bool = True,
                 loop: bool = True) -> SourceSpec:
    """--source value -> SourceSpec. Forms: index (0), /dev/videoN, video=NAME, lavfi:GRAPH, a file."""
    text = str(text)
    if text.startswith("lavfi:"):
        graph = text[len("lavfi:"):] or "testsrc2"
        if "=" not in graph:   # bare generator name: give it the requested size and rate
            w, h = size or (640, 480)
            graph = f"{graph}=size={w}x{h}:rate={fps:g}"
        return SourceSpec("lavfi", graph, "lavfi", pace=live, size=None)
    if text.isdigit() or text.startswith("/dev/video") or text.startswith("video="):
        if not live:
            raise UserError("offline mode needs a video file as --source, not a camera")
        return camera_spec(text, size, fps, mjpeg)
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"--source {text}: no such file (expected a camera index, /dev/videoN, "
                        f"lavfi:testsrc2 or a video file)")
    return SourceSpec("file", str(path), pace=live, loop=live and loop, size=size)


class AVSource:
    """One opened PyAV input that yields H x W x 3 uint8 RGB frames; read() -> None at the end."""

    def __init__(self, spec: SourceSpec):
        import av

        self.spec = spec
        try:
            self._container = av.open(spec.url, format=spec.fmt, options=dict(spec.options))
        except Exception as e:  # av.error.* for a busy/missing camera or an unreadable file
            raise UserError(f"cannot open {spec.label}: {e}") from None
        if not self._container.streams.video:
            self._container.close()
            raise UserError(f"{spec.label} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.rate = rate
        self._frames = self._container.decode(stream)
        self._t0: float | None = None
        self._first_time: float | None = None
        # what the file's index promises, to tell a clean end from a truncated file whose index survived
        # (the decoder just stops early there, without an error)
        self.expected_frames = stream.frames or None
        if stream.duration and stream.time_base:
            self.expected_s = float(stream.duration * stream.time_base)
        else:
            self.expected_s = self._container.duration / 1e6 if self._container.duration else None
        self.decoded = 0
        self._last_time: float | None = None
        self.ended_early: str | None = None    # set at the end of a file that held less than promised

    def _check_end(self) -> None:
        if self.spec.kind != "file":
            return
        name = Path(self.spec.url).name
        n, want = self.decoded, self.expected_frames
        if want and n < want - max(2, want // 100):     # tolerance: edit lists, rounding
            self.ended_early = f"{name} ended early: {n} of {want} frames decoded (the file is truncated or damaged)"
        elif self.expected_s and (self._last_time or 0.0) + 1 / self.fps < \
                self.expected_s - max(0.5, self.expected_s / 50):      # no frame count: media time
            self.ended_early = (f"{name} ended early: video stops at {self._last_time or 0.0:.1f} s of "
                                f"{self.expected_s:.1f} s (the file is truncated or damaged)")

    def read(self) -> np.ndarray | None:
        frame = next(self._frames, None)
        if frame is None:
            self._check_end()
            return None
        self.decoded += 1
        if frame.time is not None:
            self._last_time = frame.time
        if self.spec.pace and frame.time is not None:
            if self._t0 is None:
                self._t0, self._first_time = time.perf_counter(), frame.time
            delay = self._t0 + (frame.time - self._first_time) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return frame_rgb(frame, self.spec.size)

    def close(self) -> None:
        self._container.close()


class LoopingSource:
    """A file that restarts at its end (live mode)."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self._src = AVSource(spec)
        self.fps, self.rate = self._src.fps, self._src.rate
        self.ended_early: str | None = None

    def read(self):
        img = self._src.read()
        if img is None:
            self.ended_early = self._src.ended_early
            self._src.close()
            self._src = AVSource(self.spec)
            img = self._src.read()
        return img

    def close(self) -> None:
        self._src.close()


def open_source(spec: SourceSpec):
    return LoopingSource(spec) if spec.loop else AVSource(spec)


class Capture:
    """The capture thread. Opens the source at start() (errors there are the user's: UserError), then
    reads in a thread; frames go to `channel` on `loop` (lossy: newest wins; lossless: waits).

    Mid-stream failure -> close, then reopen with backoff (backoff_s, doubling up to max_backoff_s),
    `status` telling what happens; sinks are fed status frames by the pipeline meanwhile.
    """

    def __init__(self, opener: Callable[[], object], *, label: str = "source", backoff_s: float = 0.5,
                 max_backoff_s: float = 5.0, max_attempts: int | None = None,
                 max_frames: int | None = None, on_status: Callable[[str], None] | None = None):
        self.opener, self.label = opener, label
        self.backoff_s, self.max_backoff_s, self.max_attempts = backoff_s, max_backoff_s, max_attempts
        self.max_frames = max_frames
        self.on_status = on_status or (lambda s: None)
        self._state = ("starting", False)   # (status, ok), replaced whole: readers on other threads
        self.ended = False
        self.captured = 0
        self.reconnects = 0
        self.attempts = 0           # reopen attempts in the current outage
        self.history: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._src = None
        self.fps: float | None = None
        self.rate = None
        self.ended_early: str | None = None   # a file that held fewer frames than its index promised

    @property
    def state(self) -> tuple[str, bool]:
        """(status, ok) as one consistent pair."""
        return self._state

    @property
    def status(self) -> str:
        return self._state[0]

    @property
    def ok(self) -> bool:
        return self._state[1]

    def problem(self) -> str | None:
        """'<label>: <status>' while the source is not ok, else None, read in one step: reading `ok`
        and then `status` could pair a stale ok=False with the new 'ok (reconnected ...)' text."""
        status, ok = self._state
        return None if ok else f"{self.label}: {status}"

    def _set_status(self, text: str, ok: bool) -> None:
        self._state = (text, ok)
        self.history.append(text)
        del self.history[:-50]
        self.on_status(f"{self.label}: {text}")

    def start(self, loop: asyncio.AbstractEventLoop, channel: Channel, opened=None) -> None:
        """opened: a source already opened by the caller (to report open errors early)."""
        self._src = opened if opened is not None else self.opener()
        self.fps = getattr(self._src, "fps", None)
        self.rate = getattr(self._src, "rate", None)
        self._set_status("ok", True)
        self._loop, self._channel = loop, channel
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.label}", daemon=True)
        self._thread.start()

    def stop(self, join_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(join_s)

    def _deliver(self, img) -> bool:
        frame = Frame(img, time.perf_counter(), self.captured,
                      self.captured / self.fps if self.fps else None)
        self.captured += 1
        if self._channel.closed:   # the consumer is gone (shutdown, or offline failure)
            return False
        try:
            if self._channel.lossy:
                self._loop.call_soon_threadsafe(self._channel.put_nowait, frame)
                return True
            # offline: wait for room, so nothing is dropped
            return asyncio.run_coroutine_threadsafe(self._channel.put(frame), self._loop).result()
        except (RuntimeError, concurrent.futures.CancelledError):   # the loop is closed: shutting down
            return False

    def _finish(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._channel.close)
        except RuntimeError:
            pass

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    img = self._src.read()
                except Exception as e:
                    if not self._reconnect(e):
                        break
                    continue
                if img is None or (self.max_frames is not None and self.captured >= self.max_frames):
                    self._note_short()
                    self.ended = True
                    self._set_status("ended", False)
                    break
                if not self._deliver(img):
                    break
                self._note_short()    # a looping file that restarted early
        finally:
            if self._src is not None:
                try:
                    self._src.close()
                except Exception:
                    pass
                self._src = None
            self._finish()

    def _note_short(self) -> None:
        short = getattr(self._src, "ended_early", None)
        if short and short != self.ended_early:    # said once per file
            self.ended_early = short
            self.on_status(f"warning: {short}")

    def _reconnect(self, err: Exception) -> bool:
        """Reopen with backoff; False if stopped or out of attempts."""
        try:
            self._src.close()
        except Exception:
            pass
        self._src = None
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:160]
        delay, self.attempts = self.backoff_s, 0
        while not self._stop.is_set():
            self.attempts += 1
            if self.max_attempts is not None and self.attempts > self.max_attempts:
                self._set_status(f"lost ({reason}); gave up after {self.max_attempts} attempts", False)
                return False
            self._set_status(f"lost ({reason}); reconnecting, attempt {self.attempts} in {delay:.1f} s",
                             False)
            if self._stop.wait(delay):
                return False
            try:
                self._src = self.opener()
            except Exception as e:
                reason = f"{type(e).__name__}: {e}".splitlines()[0][:160]
                delay = min(delay * 2, self.max_backoff_s)
                continue
            self.reconnects += 1
            self._set_status(f"ok (reconnected after {self.attempts} attempt(s))", True)
            return True
        return False
