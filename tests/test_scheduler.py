"""streamer/reenact/scheduler.py: micro-batching across sessions, newest-wins, failures.
No timing assertions: behaviour only (batch composition, routing, drops). The stages that use it are
tested in tests/test_net3d_stage.py and tests/test_generator_stage.py (each session gets what it gets
alone)."""
from __future__ import annotations

import threading

import pytest
import torch

from streamer.reenact.scheduler import Dropped, MicroBatchScheduler, StageWorker


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads stall on the shared 2-vCPU VM
    yield
    torch.set_num_threads(n)


def test_concurrent_sessions_share_one_batch():
    sizes = []

    def run(items):
        sizes.append(len(items))
        return [x * 10 for x in items]
    with MicroBatchScheduler(run, max_batch=4, budget_ms=5000, predict=False) as s:
        futs = [s.submit(f"s{i}", i) for i in range(4)]
        assert [f.result(5) for f in futs] == [0, 10, 20, 30]  # each session gets its own result
        assert sizes == [4] and s.stats.mean_batch() == 4
        # a lone frame does not wait for companions past its deadline
        s.budget = 0.05
        assert s.submit("s0", 7).result(10) == 70
        assert sizes == [4, 1]


def test_prediction_waits_only_for_expected_frames():
    """predict=True: a frame waits for another session only when that session's next frame is due
    before the deadline (its interval is known); a lone or irregular session runs at once."""
    t = [0.0]
    s = MicroBatchScheduler(lambda items: items, max_batch=4, budget_ms=30, clock=lambda: t[0])
    try:
        with s._cond:
            s._seen = {"a": (0.033, 0.033), "b": (0.010, 0.033), "c": (0.0, None), "d": (-5.0, 0.033)}
            s._by_session = {"a": None}  # a's frame is the queued one
            t[0] = 0.033
            # b is due at 0.043 (before 0.033 + 0.030): wait for it; c has no interval, d went idle
            assert s._expected(0.033, 0.063) == [pytest.approx(0.043)]
            s._seen["b"] = (0.010, 0.060)  # b's next frame (0.070) comes after the deadline
            assert s._expected(0.033, 0.063) == []
    finally:
        s.close()


def test_lone_session_does_not_wait_for_its_deadline():
    with MicroBatchScheduler(lambda items: items, max_batch=4, budget_ms=60_000) as s:
        for i in range(3):
            assert s.submit("only", i).result(timeout=20) == i
        assert s.stats.sizes == {1: 3}


def test_more_sessions_than_max_batch_split():
    sizes = []
    gate = threading.Event()

    def run(items):
        gate.wait(5)
        sizes.append(len(items))
        return items
    with MicroBatchScheduler(run, max_batch=3, budget_ms=5000, predict=False) as s:
        first = s.submit("a", 0)
        futs = [s.submit(f"s{i}", i) for i in range(5)]
        gate.set()
        assert first.result(5) == 0 and [f.result(5) for f in futs] == list(range(5))
    assert sum(sizes) == 6 and max(sizes) <= 3


def test_newest_frame_of_a_session_wins():
    started, gate = threading.Event(), threading.Event()

    def run(items):
        started.set()
        gate.wait(5)
        return items
    with MicroBatchScheduler(run, max_batch=2, budget_ms=0) as s:
        busy = s.submit("x", "busy")
        assert started.wait(5)  # the worker is inside run(): later frames queue
        old = s.submit("a", "old")
        new = s.submit("a", "new")
        gate.set()
        with pytest.raises(Dropped):
            old.result(5)
        assert new.result(5) == "new" and busy.result(5) == "busy"
        assert s.stats.dropped == 1


def test_failures_reach_every_session_and_the_worker_survives():
    calls = []

    def run(items):
        calls.append(items)
        if "bad" in items:
            raise RuntimeError("boom")
        return items
    with MicroBatchScheduler(run, max_batch=2, budget_ms=5000, predict=False) as s:
        a, b = s.submit("a", "bad"), s.submit("b", "ok")
        for f in (a, b):
            with pytest.raises(RuntimeError, match="boom"):
                f.result(5)
        s.budget = 0.05
        assert s.submit("a", "fine").result(10) == "fine"


def test_expected_run_time_by_batch_size():
    s = MicroBatchScheduler(lambda items: items, max_batch=8, budget_ms=30)
    try:
        assert s.expected_run(3) == 0.0
        s.stats.run_ms.update({1: 10.0, 4: 20.0})
        assert s.expected_run(1) == 0.010 and s.expected_run(3) == 0.020 and s.expected_run(8) == 0.020
    finally:
        s.close()


def test_stage_worker_runs_only_while_it_has_users_and_keeps_its_statistics():
    worker = StageWorker(lambda items: [x * 2 for x in items], max_batch=4, budget_ms=1.0, name="test-stage")
    with pytest.raises(RuntimeError, match="no session has joined"):
        worker.submit("a", 1)
    worker.join()
    worker.join()                                     # two users share one worker thread
    first = worker.scheduler
    assert worker.submit("a", 3).result(timeout=5) == 6
    worker.leave("a")
    assert worker.scheduler is first                  # one user left
    assert worker.submit("b", 4).result(timeout=5) == 8
    worker.leave("b")
    assert worker.scheduler is None and not first._thread.is_alive()   # the last one left: no thread
    worker.join()                                     # a new session starts a new worker ...
    assert worker.scheduler is not first
    assert worker.submit("c", 5).result(timeout=5) == 10
    assert worker.stats.frames == 3                   # ... and the statistics span both
    worker.close()
    worker.leave("c")                                 # a session ending after the stage closed: harmless
    assert worker.scheduler is None
