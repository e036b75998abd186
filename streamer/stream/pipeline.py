"""The asyncio pipeline: newest captured frame -> reenactor (in a worker thread) -> every subscribed sink.

Every hand-off is a bounded `Channel`. Live channels are lossy (size 1, newest wins) so an overloaded
stage drops frames instead of building a backlog; offline channels are lossless (put() waits) so a
file -> file run processes every frame. When the input goes quiet (source lost, peer paused) the
pipeline keeps its sinks fed with a status frame, so a video call shows a message, not a frozen image.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from streamer.reenact.api import Output, Reenactor


class ChannelClosed(Exception):
    """get() on a closed, drained channel."""


@dataclass
class Frame:
    image: Any          # H x W x 3 uint8 RGB ndarray, or an av.VideoFrame converted in the worker thread
    t_capture: float    # time.perf_counter() when the frame was captured / received
    index: int          # capture sequence number
    media_t: float | None = None  # seconds into the source at its frame rate (None: live clock)


@dataclass
class Published:
    image: np.ndarray   # H x W x 3 uint8 RGB
    t_capture: float
    index: int
    face_found: bool = True
    status: str | None = None   # set for status frames (no fresh input)
    stage_ms: dict[str, float] = field(default_factory=dict)


class Channel:
    """A bounded queue owned by one event loop. lossy: put never waits; when full the oldest item is
    dropped (counted in `dropped`). lossless: put waits for room (back-pressure)."""

    def __init__(self, maxsize: int = 1, lossy: bool = True):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize, self.lossy = maxsize, lossy
        self._items: collections.deque = collections.deque()
        self._getters: list[asyncio.Future] = []
        self._putters: list[asyncio.Future] = []
        self.closed = False
        self.dropped = 0
        self.put_count = 0
        self.max_depth = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item) -> bool:
        """Lossy put (also used from threads via loop.call_soon_threadsafe). False if closed."""
        if self.closed:
            return False
        if len(self._items) >= self.maxsize:
            if not self.lossy:
                raise asyncio.QueueFull
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self.put_count += 1
        self.max_depth = max(self.max_depth, len(self._items))
        _wake(self._getters)
        return True

    async def put(self, item) -> bool:
        while not self.lossy and len(self._items) >= self.maxsize and not self.closed:
            await _wait(self._putters)
        return self.put_nowait(item)

    def get_nowait(self):
        if not self._items:
            raise ChannelClosed if self.closed else asyncio.QueueEmpty
        item = self._items.popleft()
        _wake(self._putters)
        return item

    async def get(self):
        while not self._items:
            if self.closed:
                raise ChannelClosed
            await _wait(self._getters)
        return self.get_nowait()

    def close(self) -> None:
        """No more puts; getters drain what is left, then get ChannelClosed."""
        self.closed = True
        _wake(self._getters)
        _wake(self._putters)


async def _wait(waiters: list) -> None:
    fut = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    finally:
        if fut in waiters:
            waiters.remove(fut)


def _wake(waiters: list) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
    waiters.clear()


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Stats:
    """Counters and rolling windows for one pipeline. Latency = capture -> handed to a sink."""

    def __init__(self, window: int = 300):
        self.processed = 0
        self.no_face = 0
        self.held = 0                # renders that did not hold together (the last good one was shown)
        self.status_frames = 0
        self.errors = 0
        self.dropped_capture = 0     # frames captured but replaced by a newer one before processing
        self.sink_dropped: dict[str, int] = {}
        self.sink_errors: dict[str, str] = {}
        self.published: dict[str, int] = collections.defaultdict(int)
        self.latency_ms: collections.deque = collections.deque(maxlen=window)
        self.stage_ms: dict[str, collections.deque] = {}
        self._done_t: collections.deque = collections.deque(maxlen=window)

    def record_processed(self, out: Output, queue_ms: float, process_ms: float) -> None:
        self.processed += 1
        self.no_face += 0 if out.face_found else 1
        self.held += 1 if out.held else 0
        self._done_t.append(time.perf_counter())
        stages = dict(out.stage_ms or {})
        stages["queue"], stages["process"] = queue_ms, process_ms
        for k, v in stages.items():
            self.stage_ms.setdefault(k, collections.deque(maxlen=100)).append(float(v))

    def record_publish(self, item: Published, sink: str) -> None:
        self.published[sink] += 1
        if item.status is None:
            self.latency_ms.append((time.perf_counter() - item.t_capture) * 1000.0)

    def fps(self, horizon_s: float = 2.0) -> float:
        now = time.perf_counter()
        recent = [t for t in self._done_t if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def snapshot(self) -> dict:
        lat = list(self.latency_ms)
        return {
            "fps": round(self.fps(), 2),
            "processed": self.processed,
            "dropped": self.dropped_capture,
            "no_face": self.no_face,
            "held": self.held,
            "status_frames": self.status_frames,
            "errors": self.errors,
            "latency_ms_p50": round(_pct(lat, 50), 2) if lat else None,
            "latency_ms_p95": round(_pct(lat, 95), 2) if lat else None,
            "stage_ms": {k: round(float(np.mean(v)), 2) for k, v in self.stage_ms.items() if v},
            "published": dict(self.published),
            "sink_dropped": dict(self.sink_dropped),
            "sink_errors": dict(self.sink_errors),
        }

    def line(self) -> str:
        s = self.snapshot()
        lat = (f"{s['latency_ms_p50']:.0f}/{s['latency_ms_p95']:.0f} ms" if s["latency_ms_p50"] is not None
               else "-")
        return (f"{s['fps']:5.1f} fps | latency p50/p95 {lat} | dropped {s['dropped']} | "
                f"no-face {s['no_face']}" + (f" | held {s['held']}" if s["held"] else ""))


def status_frame(text: str, last: np.ndarray | None, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The last good frame dimmed, with `text` on it (or a dark frame of `size` = (w, h))."""
    from PIL import Image, ImageDraw

    base = (last.astype(np.uint16) // 3).astype(np.uint8) if last is not None else \
        np.full((size[1], size[0], 3), 24, np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    h = img.height
    words, lines, cur = text.split(), [], ""
    per_line = max(12, img.width // 9)
    for w in words:
        if len(cur) + len(w) + 1 > per_line and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    lines.append(cur)
    y = max(4, h // 2 - 8 * len(lines))
    for ln in lines[:6]:
        draw.text((8, y), ln, fill=(255, 255, 255))
        y += 16
    return np.asarray(img)


class Pipeline:
    """input Channel -> reenactor.process on one worker thread -> every subscriber Channel.

    The worker thread is private to this pipeline, so the reenactor (not thread-safe) only ever runs
    there: process(), reset_reference() and side-by-side changes are serialized.
    """

    def __init__(self, reenactor: Reenactor, *, offline: bool = False, name: str = "main",
                 idle_after_s: float = 0.5, status_every_s: float = 0.2,
                 status_text: Callable[[], str | None] | None = None,
                 idle_size: tuple[int, int] = (640, 480)):
        self.reenactor = reenactor
        self._engine_to_close = reenactor
        self.offline, self.name = offline, name
        self.input = Channel(maxsize=4 if offline else 1, lossy=not offline)
        self.stats = Stats()
        self.idle_after_s, self.status_every_s = idle_after_s, status_every_s
        self.status_text = status_text or (lambda: None)
        self.idle_size = idle_size
        self.last_image: np.ndarray | None = None
        self._subs: list[tuple[Channel, str]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"reenact-{name}")
        self.error: str | None = None

    # ---- subscribers (sinks, WebRTC tracks) ----
    def subscribe(self, name: str, maxsize: int = 1) -> Channel:
        ch = Channel(maxsize=maxsize if not self.offline else max(maxsize, 4), lossy=not self.offline)
        self._subs.append((ch, name))
        return ch

    def unsubscribe(self, ch: Channel) -> None:
        self._subs = [(c, n) for c, n in self._subs if c is not ch]
        ch.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    async def _publish(self, item: Published) -> None:
        for ch, name in list(self._subs):
            await ch.put(item)  # lossy: never waits; lossless (offline): back-pressure from the sink
            if ch.dropped:
                self.stats.sink_dropped[name] = ch.dropped

    # ---- reenactor access, always on the worker thread ----
    async def call(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def reset_reference(self) -> None:
        await self.call(self.reenactor.reset_reference)

    async def set_side_by_side(self, value: bool | None = None) -> bool:
        def flip():
            r = self.reenactor
            r.side_by_side = (not r.side_by_side) if value is None else bool(value)
            return r.side_by_side
        return await self.call(flip)

    async def swap_reenactor(self, new: Reenactor) -> None:
        def swap():
            new.side_by_side = getattr(self.reenactor, "side_by_side", False)
            old, self.reenactor = self.reenactor, new
            self._engine_to_close = new
            _close_engine(old)  # on the worker thread: never while it is processing a frame
        await self.call(swap)

    def _process(self, frame: Frame) -> tuple[Output, float]:
        img = frame.image
        if not isinstance(img, np.ndarray):          # av.VideoFrame from WebRTC: convert off the loop
            img = img.to_ndarray(format="rgb24")
        t0 = time.perf_counter()
        # offline (file -> file, unpaced) the reenactor's filters must run on media time, not wall time
        out = self.reenactor.process(img, frame.media_t if self.offline else None)
        return out, (time.perf_counter() - t0) * 1000.0

    # ---- main loop ----
    async def run(self) -> None:
        """Until the input channel is closed and drained; then closes every subscriber channel."""
        timeout = self.idle_after_s
        try:
            while True:
                try:
                    if self.offline:
                        frame = await self.input.get()
                    else:
                        frame = await asyncio.wait_for(self.input.get(), timeout)
                except ChannelClosed:
                    break
                except asyncio.TimeoutError:
                    # no fresh input: keep sinks fed with a status frame, at a low rate
                    await self._publish_status()
                    timeout = self.status_every_s
                    continue
                timeout = self.idle_after_s
                if not await self._handle(frame):
                    break
        finally:
            for ch, _ in self._subs:
                ch.close()

    async def _handle(self, frame: Frame) -> bool:
        """Process and publish one frame. False: stop (offline reenactor failure)."""
        t_start = time.perf_counter()
        try:
            out, process_ms = await self.call(self._process, frame)
        except asyncio.CancelledError:
            # close() shut the executor down under a queued frame: that is a stop, not an error; a
            # cancellation of this task itself still propagates
            if self.input.closed and not asyncio.current_task().cancelling():
                return False
            raise
        except Exception as e:  # live: a crashing reenactor must not kill the stream: report, go on
            self.stats.errors += 1
            self.error = f"reenactor error: {type(e).__name__}: {e}"
            if self.offline:     # offline: a status frame in the output file would be wrong; stop
                self.input.close()
                return False
            await self._publish_status(self.error)
            return True
        self.error = None
        self.stats.dropped_capture = self.input.dropped
        self.stats.record_processed(out, (t_start - frame.t_capture) * 1000.0, process_ms)
        self.last_image = out.image
        await self._publish(Published(out.image, frame.t_capture, frame.index, out.face_found,
                                      None, dict(out.stage_ms or {})))
        return True

    async def _publish_status(self, text: str | None = None) -> None:
        text = text or self.status_text() or "waiting for video..."
        img = await asyncio.to_thread(status_frame, text, self.last_image, self.idle_size)
        self.stats.status_frames += 1
        await self._publish(Published(img, time.perf_counter(), -1, False, text))

    def close(self) -> None:
        self.input.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        engine, self._engine_to_close = self._engine_to_close, None
        if engine is not None:  # release the engine's own resources (e.g. its MediaPipe tracker)
            # not a daemon: the interpreter waits for it at exit. A daemon thread still freeing the
            # session's tensors while Python finalizes is killed inside torch's destructor, which
            # aborts the process ("terminate called without an active exception", exit 134)
            threading.Thread(target=_close_after, args=(self._executor, engine), name="close-session").start()


def _close_engine(engine) -> None:
    closer = getattr(engine, "close", None)
    if callable(closer):
        try:
            closer()
        except Exception:  # a failing close must not take the pipeline down with it
            pass


def _close_after(executor, engine) -> None:
    executor.shutdown(wait=True)   # the frame being processed, if any, finishes first
    _close_engine(engine)


async def run_sink(sink, pipeline: Pipeline, ch: Channel) -> None:
    """Feed one sink from its channel. sink.write is blocking I/O, so it runs in a thread. A failing
    sink is reported and detached; the others keep running."""
    try:
        while True:
            try:
                item = await ch.get()
            except ChannelClosed:
                break
            await asyncio.to_thread(sink.write, item)
            pipeline.stats.record_publish(item, sink.name)
    except Exception as e:
        pipeline.stats.sink_errors[sink.name] = f"{type(e).__name__}: {e}"
    finally:
        pipeline.unsubscribe(ch)
        try:
            await asyncio.to_thread(sink.close)
        except Exception as e:   # finishing failed (e.g. disk full): reported like a failed write
            pipeline.stats.sink_errors.setdefault(sink.name, f"{type(e).__name__}: {e}")
