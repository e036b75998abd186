"""streamer.bench.soak: per-interval rows (RSS, latency, frames) and the pass/fail verdict, on a fake engine
and a lavfi source (the 10-minute run with the real engine is in docs/faults.md)."""
import asyncio
import threading

from streamer.bench.soak import soak, verdict
from streamer.testing.fakes import FakeReenactor

SOURCE = "lavfi:testsrc2=size=160x120:rate=30"


def test_rows_and_verdict():
    res = asyncio.run(soak(FakeReenactor(), SOURCE, minutes=1.5 / 60, interval_s=0.5, log=lambda m: None))
    rows = res["intervals"]
    assert len(rows) == 3 and [r["t_min"] for r in rows] == sorted(r["t_min"] for r in rows)
    assert all(r["processed"] > 0 and r["rss_mb"] > 0 and r["latency_p50_ms"] is not None for r in rows)
    assert rows[0]["rss_growth_mb"] == 0.0
    assert rows[-1]["rss_growth_mb"] == round(rows[-1]["rss_mb"] - rows[0]["rss_mb"], 1)
    ok, text = verdict(res, max_growth_mb=1e6)
    assert ok and text.endswith("PASS") and res["passed"]
    ok, text = verdict(res, max_growth_mb=-1e6)          # any growth exceeds a negative limit
    assert not ok and text.endswith("FAIL")


class Stuck(FakeReenactor):
    """Hangs after 5 frames (a deadlocked engine): later intervals get no frames."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def process(self, image, t=None):
        if self.calls >= 5:
            self.release.wait(5)
        return super().process(image, t)


def test_a_stalled_pipeline_fails():
    stuck = Stuck()

    async def main():
        try:
            return await soak(stuck, SOURCE, minutes=1.5 / 60, interval_s=0.5, log=lambda m: None)
        finally:
            stuck.release.set()

    res = asyncio.run(main())
    ok, text = verdict(res, max_growth_mb=1e6)
    assert not ok and "stalled" in text and res["intervals"][-1]["processed"] == 0
