"""Micro-batching across sessions: several streams share one model stage (one GPU) within a latency budget.

    sched = MicroBatchScheduler(run_batch, max_batch=8, budget_ms=15)   # run_batch(items) -> results
    result = sched.submit(session_id, item).result()                     # from each session's thread

The engine's two batched stages use it (streamer.reenact.net3d_stage, streamer.reenact.generator_stage).

The scheduler's worker thread takes the oldest queued frame, then waits for companions until either
`max_batch` frames are queued or the oldest one's deadline comes: arrival + budget - the expected run
time of a batch of that size (an average of past runs per size). It only waits for frames that are
expected before that deadline: each session's next arrival is predicted from its own frame interval,
so out-of-phase cameras do not make each other wait for nothing, and a lone session never waits.
It runs ONE batch, hands each result back to its session's future, and repeats. A session never has
two frames queued: a newer frame replaces the queued one (its caller gets `Dropped`), as the live
pipeline's newest-wins channels do. Each session has one frame in flight (process() blocks), so its
frame rate is 1 / latency: keep the budget under one frame period (bench default: half of one).

A stage pads each batch to a fixed size where its engine needs static shapes (engines.accel.buckets).
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

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


class StageWorker:
    """A shared stage's scheduler, running only while the stage has users: the first `join` starts its
    worker thread and the last `leave` closes it, so an engine with no session holds no thread. Its
    `stats` span every worker it has run (the benchmarks read them across sessions coming and going)."""

    def __init__(self, run_batch: Callable[[list], list], *, max_batch: int, budget_ms: float, name: str):
        self.run_batch, self.max_batch, self.budget_ms, self.name = run_batch, max_batch, budget_ms, name
        self.stats = SchedulerStats()
        self.scheduler: MicroBatchScheduler | None = None
        self._lock = threading.Lock()
        self._users = 0

    def join(self) -> None:
        with self._lock:
            if self.scheduler is None:
                self.scheduler = MicroBatchScheduler(self.run_batch, max_batch=self.max_batch,
                                                     budget_ms=self.budget_ms, name=self.name, stats=self.stats)
            self._users += 1

    def leave(self, session: Hashable | None = None) -> None:
        """A user is done (and `session`, when given, sends no more frames)."""
        with self._lock:
            if self.scheduler is None:     # closed already
                return
            if session is not None:
                self.scheduler.forget(session)
            self._users -= 1
            if self._users == 0:
                self._close()

    def submit(self, session: Hashable, item) -> concurrent.futures.Future:
        scheduler = self.scheduler
        if scheduler is None:
            raise RuntimeError(f"{self.name}: no session has joined (or the stage was closed)")
        return scheduler.submit(session, item)

    def forget(self, session: Hashable) -> None:
        with self._lock:
            if self.scheduler is not None:
                self.scheduler.forget(session)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        self._users = 0
