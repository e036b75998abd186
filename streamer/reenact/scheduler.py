"""Micro-batching across sessions: several streams share one model stage (one GPU) within a latency budget.

    sched = MicroBatchScheduler(runner.run, max_batch=8, budget_ms=33)
    session = ModelSession(sched, runner, source, p_source, tuned=pack.tuned)   # one per stream
    out = session.process(frame)          # blocking: the Reenactor shape (streamer.reenact.api)

The scheduler's worker thread takes the oldest queued frame, then waits for companions until either
`max_batch` frames are queued or the oldest one's deadline comes: arrival + budget - the expected run
time of a batch of that size (an average of past runs per size). It only waits for frames that are
expected before that deadline: each session's next arrival is predicted from its own frame interval,
so out-of-phase cameras do not make each other wait for nothing, and a lone session never waits.
It runs ONE batch, hands each result back to its session's future, and repeats. A session never has
two frames queued: a newer frame replaces the queued one (its caller gets `Dropped`), as the live
pipeline's newest-wins channels do. Each session has one frame in flight (process() blocks), so its
frame rate is 1 / latency: keep the budget under one frame period (bench default: half of one).

`StageRunner` adapts an engines.method.frame_stage stage to this: it stacks the sessions' inputs, pads the
batch up to a fixed size when the engine needs static shapes (CUDA graphs, TensorRT, compiled), runs
one engine per batch size (built lazily by engines.accel.compile.build_engine), and splits the outputs.
Avatars live in the stage's AvatarBank: `add_avatar(tuned) -> slot`; samples gather their own tuned
weights by slot inside the batch, so no generator is copied per session or per frame.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch

from streamer.reenact.api import Output

IDLE_S = 1.0    # a session silent this long is not waited for
SLACK_S = 0.002  # how late a predicted frame may be before the batch goes without it


class Dropped(Exception):
    """The frame was replaced by a newer one from the same session before it ran."""


@dataclass
class _Request:
    session: Hashable
    item: Any
    t_submit: float
    future: concurrent.futures.Future


@dataclass
class SchedulerStats:
    batches: int = 0
    frames: int = 0
    dropped: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    run_ms: dict[int, float] = field(default_factory=dict)  # running mean per batch size
    per_session: dict = field(default_factory=dict)          # session -> frames it ran here

    def mean_batch(self) -> float:
        return self.frames / self.batches if self.batches else 0.0

    def summary(self) -> dict:
        """What one shared stage did: calls, frames, mean batch, and how many sessions shared it."""
        return {"calls": self.batches, "frames": self.frames, "mean_batch": round(self.mean_batch(), 2),
                "dropped": self.dropped, "sessions": len(self.per_session),
                "frames_per_session": {str(k): v for k, v in self.per_session.items()}}


class MicroBatchScheduler:
    def __init__(self, run_batch: Callable[[list], list], max_batch: int = 8, budget_ms: float = 33.0,
                 clock: Callable[[], float] = time.perf_counter, name: str = "model-scheduler",
                 predict: bool = True, stats: SchedulerStats | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.budget = budget_ms / 1000.0
        self.clock = clock
        self.predict = predict  # False: always wait for max_batch frames or the deadline
        self.stats = stats or SchedulerStats()   # a caller's own: counts that outlive this worker
        self._queue: deque[_Request] = deque()
        self._by_session: dict[Hashable, _Request] = {}
        self._seen: dict[Hashable, tuple[float, float | None]] = {}  # session -> (last submit, interval)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- client side -----------------------------------------------------------------------------
    def submit(self, session: Hashable, item) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            old = self._by_session.pop(session, None)
            if old is not None:  # newest wins: the older frame never runs
                self._queue.remove(old)
                self.stats.dropped += 1
                old.future.set_exception(Dropped())
            now = self.clock()
            last = self._seen.get(session)
            if last is None:
                self._seen[session] = (now, None)
            else:
                gap = now - last[0]
                self._seen[session] = (now, gap if last[1] is None else 0.7 * last[1] + 0.3 * gap)
            req = _Request(session, item, now, fut)
            self._queue.append(req)
            self._by_session[session] = req
            self._cond.notify()
        return fut

    def forget(self, session: Hashable) -> None:
        """A session ended: stop expecting its frames."""
        with self._cond:
            self._seen.pop(session, None)

    def close(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- worker side -----------------------------------------------------------------------------
    def expected_run(self, n: int) -> float:
        """Seconds a batch of n is expected to take: its own mean, else the nearest larger/smaller."""
        known = self.stats.run_ms
        if not known:
            return 0.0
        if n in known:
            return known[n] / 1000.0
        larger = [k for k in known if k > n]
        k = min(larger) if larger else max(known)
        return known[k] / 1000.0

    def _deadline(self) -> float:
        n = min(len(self._queue) + 1, self.max_batch)  # what one more companion would cost
        return self._queue[0].t_submit + max(0.0, self.budget - self.expected_run(n))

    def _expected(self, now: float, deadline: float) -> list[float]:
        """Predicted arrivals before `deadline` of active sessions that have no frame queued."""
        out = []
        for s, (last, interval) in self._seen.items():
            if s in self._by_session or interval is None or now - last > IDLE_S:
                continue
            t = last + interval
            if now - SLACK_S <= t <= deadline:
                out.append(t)
        return out

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed and not self._queue:
                return None
            while len(self._queue) < self.max_batch and not self._closed:
                now = self.clock()
                deadline = self._deadline()
                if now >= deadline:
                    break
                if not self.predict:
                    self._cond.wait(deadline - now)
                    continue
                expected = self._expected(now, deadline)
                if not expected:
                    break
                self._cond.wait(min(deadline, max(expected) + SLACK_S) - now)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            for r in batch:
                self._by_session.pop(r.session, None)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            t0 = self.clock()
            try:
                results = self.run_batch([r.item for r in live])
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
            except BaseException as e:  # every waiting session learns of the failure
                for r in live:
                    r.future.set_exception(e)
                continue
            ms = (self.clock() - t0) * 1000.0
            n = len(live)
            st = self.stats
            st.batches += 1
            st.frames += n
            st.sizes[n] = st.sizes.get(n, 0) + 1
            prev = st.run_ms.get(n)
            st.run_ms[n] = ms if prev is None else 0.8 * prev + 0.2 * ms
            for r in live:
                st.per_session[r.session] = st.per_session.get(r.session, 0) + 1
            for r, res in zip(live, results):
                r.future.set_result(res)


# -- the frame stage as a batch function ----------------------------------------------------------------
@dataclass
class StageRequest:
    frame: torch.Tensor     # uint8 [H, W, 3] (any device)
    roi: torch.Tensor       # [5]
    source: torch.Tensor    # the session's source code, [*latent_shape]
    p_ref: torch.Tensor     # [K] normalised
    slot: int


@dataclass
class StageResult:
    image: np.ndarray       # uint8 [R, R, 3]
    presence: float
    roi_next: torch.Tensor  # [5], on the stage's device
    p: torch.Tensor         # [K] normalised, on the stage's device


STATIC_BACKENDS = ("tensorrt", "compile", "cuda-graph")


class StageRunner:
    """Runs an engines.method.frame_stage stage on a list of StageRequests as one batch."""

    def __init__(self, stage, device="cpu", buckets: Sequence[int] = (1, 2, 4, 8, 16),
                 prefer: Sequence[str] | None = None, dtype: torch.dtype | str = torch.float32,
                 log: Callable[[str], Any] | None = print):
        self.stage = stage
        self.device = torch.device(device)
        self.buckets = tuple(sorted(buckets))
        self.prefer = tuple(prefer) if prefer else (("eager",) if self.device.type == "cpu" else
                                                    ("tensorrt", "cuda-graph", "eager"))
        if isinstance(dtype, str):
            from engines.accel.compile import DTYPES
            dtype = DTYPES[dtype]
        self.dtype = dtype
        self.log = log
        self.engines: dict[int, tuple[Callable, Any]] = {}
        self._lock = threading.Lock()
        self._free_slots = list(range(stage.bank.slots - 1, 0, -1))

    @property
    def static(self) -> bool:
        return any(b in STATIC_BACKENDS for b in self.prefer)

    # -- avatars ----------------------------------------------------------------------------------
    def add_avatar(self, tuned: dict[str, torch.Tensor] | None) -> int:
        """Load an avatar's tuned weights into a free bank slot; 0 (the base weights) if untuned."""
        if not tuned:
            return 0
        with self._lock:
            if not self._free_slots:
                raise RuntimeError(f"all {self.stage.bank.slots - 1} avatar slots are in use")
            slot = self._free_slots.pop()
        self.stage.bank.set(slot, {k: v.to(self.device) for k, v in tuned.items()})
        return slot

    def remove_avatar(self, slot: int) -> None:
        if slot:
            self.stage.bank.reset(slot)
            with self._lock:
                self._free_slots.append(slot)

    def normalise(self, p_raw) -> torch.Tensor:
        d = self.stage.directions
        return d.normalise(torch.as_tensor(p_raw, dtype=torch.float32, device=self.device)).reshape(-1)

    # -- engines ----------------------------------------------------------------------------------
    def bucket(self, n: int) -> int:
        if not self.static:
            return n
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"batch of {n} exceeds the largest bucket {self.buckets[-1]}")

    def engine(self, n: int, frame_hw: tuple[int, int], inputs: tuple | None = None):
        """The callable for batch n at this frame size. Static engines are verified on `inputs` (the
        first real batch of this size; run() passes it) and on its mirror image: a face's error says
        whether a reduced precision or a captured graph is good enough, a noise frame's does not
        (its landmarks are chaotic, so tiny differences look like 1e-1 errors and every candidate
        gets rejected). Without inputs the stage's synthetic examples are used."""
        key = (n, frame_hw)
        if key not in self.engines:
            if self.static:
                from engines.accel.compile import build_engine
                if inputs is None:
                    ex = self.stage.example_inputs(n, self.device, frame_hw)
                    chk = self.stage.example_inputs(n, self.device, frame_hw, seed=1)
                else:
                    ex, chk = tuple(inputs), mirrored(inputs)
                self.engines[key] = build_engine(self.stage, ex, self.device, self.dtype, self.prefer,
                                                 check_inputs=[chk], name=f"frame-stage b{n}", log=self.log)
            else:
                mod = self.stage if self.dtype == torch.float32 else self.stage.with_precision(self.dtype)
                self.engines[key] = (_no_grad(mod), None)
        return self.engines[key][0]

    def run(self, items: list[StageRequest]) -> list[StageResult]:
        n = len(items)
        b = self.bucket(n)
        pad = items + [items[-1]] * (b - n)  # padded rows repeat the last request; results dropped
        dev = self.device
        frame = torch.stack([torch.as_tensor(r.frame) for r in pad]).to(dev, non_blocking=True)
        roi = torch.stack([r.roi.to(dev) for r in pad]).float()
        source = torch.stack([r.source.to(dev) for r in pad]).float()
        p_ref = torch.stack([r.p_ref.to(dev) for r in pad]).float()
        slot = torch.tensor([r.slot for r in pad], device=dev)
        inputs = (frame, roi, source, p_ref, slot)
        out = self.engine(b, tuple(frame.shape[1:3]), inputs)(*inputs)
        images = out["image"][:n].cpu().numpy()
        presence = out["presence"][:n].float().cpu().tolist()
        return [StageResult(images[i], presence[i], out["roi_next"][i], out["p"][i]) for i in range(n)]


def mirrored(inputs: tuple) -> tuple:
    """A stage batch seen in a mirror: frames flipped left-right, ROIs reflected (x -> W - x, angle
    negated), sources / references / slots in reverse order. Still faces, but different inputs, so an
    engine that replays its capture inputs instead of reading new ones fails the check."""
    frame, roi, source, p_ref, slot = inputs
    roi = roi.clone()
    roi[:, 0] = frame.shape[2] - roi[:, 0]
    roi[:, 4] = -roi[:, 4]
    return frame.flip(2), roi, source.flip(0), p_ref.flip(0), slot.flip(0)


def _no_grad(fn):
    def run(*args):
        with torch.no_grad():
            return fn(*args)
    return run


class ModelSession:
    """One stream on a shared stage: face tracker, avatar slot, source code and reference p.

    process(image uint8 HxWx3) -> streamer.reenact.api.Output (blocking). mode 'absolute' drives the avatar
    to the driver's p (official: dp = p_t - p_source); 'relative' moves it by the driver's change
    from its first face frame (dp = p_t - p_t0; reset_reference() takes a new p_t0)."""

    side_by_side = False

    def __init__(self, scheduler: MicroBatchScheduler, runner: StageRunner, source: torch.Tensor,
                 p_source, tuned: dict | None = None, detector=None, mode: str = "absolute"):
        from engines.method.frame_stage import FaceTracker
        if mode not in ("absolute", "relative"):
            raise ValueError("mode must be 'absolute' or 'relative'")
        self.scheduler, self.runner, self.mode = scheduler, runner, mode
        self.source = torch.as_tensor(source, dtype=torch.float32).to(runner.device).reshape(
            runner.stage.source_shape)
        self.p_source = runner.normalise(p_source)
        self.p_ref = self.p_source
        self._take_reference = mode == "relative"
        self.slot = runner.add_avatar(tuned)
        self.tracker = FaceTracker(detector)
        self.last_image: np.ndarray | None = None
        self.frames = 0

    def reset_reference(self) -> None:
        self._take_reference = True

    def process(self, image: np.ndarray, t: float | None = None) -> Output:
        t0 = time.perf_counter()
        frame = torch.from_numpy(np.ascontiguousarray(image))
        roi = self.tracker.roi_for(frame.to(self.runner.device))
        t_detect = time.perf_counter()
        if roi is None:
            return self._no_face(t0, t_detect)
        req = StageRequest(frame, roi, self.source, self.p_ref, self.slot)
        res: StageResult = self.scheduler.submit(id(self), req).result()
        t_done = time.perf_counter()
        face = self.tracker.update(res.presence, res.roi_next)
        if face and self._take_reference:
            self.p_ref, self._take_reference = res.p.clone(), False
        if face or self.last_image is None:
            self.last_image = res.image
        self.frames += 1
        return Output(self.last_image, face, {"detect": (t_detect - t0) * 1000, "model": (t_done - t_detect) * 1000})

    def _no_face(self, t0, t_detect) -> Output:
        img = self.last_image
        if img is None:
            side = self.runner.stage.synth.g.resolution
            img = np.zeros((side, side, 3), np.uint8)
        return Output(img, False, {"detect": (t_detect - t0) * 1000})

    def close(self) -> None:
        self.scheduler.forget(id(self))
        self.runner.remove_avatar(self.slot)
        self.slot = 0
