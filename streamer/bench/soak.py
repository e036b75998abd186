"""`python -m streamer.bench.soak --minutes 10`: a long live run that watches memory and latency.

A looping clip (default assets/pexels_woman.mp4), paced like a camera, goes through the live pipeline
(capture thread -> lossy channel -> the real reenactor -> sinks) for the given time. Every interval
(default 60 s) one line: RSS, its change since the end of the first interval (warm-up: model loading,
allocator and MediaPipe pools), capture -> publish latency p50/p95 of that interval, frames processed,
dropped and without a face. Exit status 1 if RSS grew more than --max-growth-mb after warm-up or the
pipeline stopped producing frames; the JSON holds every interval.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from engines.core.errors import main_guard
from streamer.bench.report import save_json

ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


async def soak(reenactor, source: str, minutes: float, interval_s: float, sinks=(), log=print) -> dict:
    from streamer.stream.pipeline import Pipeline, run_sink
    from streamer.stream.sinks import NullSink
    from streamer.stream.sources import Capture, open_source, parse_source

    spec = parse_source(source, live=True, loop=True)
    pipe = Pipeline(reenactor)
    probe = NullSink("soak")
    lat: list[float] = []
    write = probe.write

    def measured_write(item):
        write(item)
        if item.status is None:
            lat.append((time.perf_counter() - item.t_capture) * 1000.0)
    probe.write = measured_write
    tasks = [asyncio.ensure_future(run_sink(s, pipe, pipe.subscribe(s.name))) for s in (probe, *sinks)]
    tasks.append(asyncio.ensure_future(pipe.run()))
    cap = Capture(lambda: open_source(spec), label=spec.label)
    cap.start(asyncio.get_running_loop(), pipe.input)
    rows, t0 = [], time.perf_counter()
    last = {"processed": 0, "dropped": 0, "no_face": 0}
    try:
        n_int = max(1, int(round(minutes * 60 / interval_s)))
        for k in range(n_int):
            await asyncio.sleep(t0 + (k + 1) * interval_s - time.perf_counter())
            st = pipe.stats
            cur = {"processed": st.processed, "dropped": pipe.input.dropped, "no_face": st.no_face}
            window, lat[:] = list(lat), []
            row = {"t_min": round((time.perf_counter() - t0) / 60, 2), "rss_mb": round(rss_mb(), 1),
                   **{k2: cur[k2] - last[k2] for k2 in cur},
                   "latency_p50_ms": round(float(np.percentile(window, 50)), 1) if window else None,
                   "latency_p95_ms": round(float(np.percentile(window, 95)), 1) if window else None,
                   "errors": st.errors, "source": cap.status}
            row["fps"] = round(row["processed"] / interval_s, 1)
            last = cur
            row["rss_growth_mb"] = round(row["rss_mb"] - rows[0]["rss_mb"], 1) if rows else 0.0
            rows.append(row)
            log(f"{row['t_min']:6.2f} min | RSS {row['rss_mb']:7.1f} MB ({row['rss_growth_mb']:+.1f}) | latency "
                f"p50/p95 {row['latency_p50_ms']}/{row['latency_p95_ms']} ms | {row['fps']:.1f} fps | dropped "
                f"{row['dropped']} | no-face {row['no_face']} | errors {row['errors']}")
    finally:
        await asyncio.to_thread(cap.stop)
        pipe.close()
        await asyncio.wait(tasks, timeout=5)
    return {"intervals": rows, "interval_s": interval_s, "source": source}


def verdict(result: dict, max_growth_mb: float) -> tuple[bool, str]:
    rows = result["intervals"]
    growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"] if len(rows) > 1 else 0.0
    p50 = [r["latency_p50_ms"] for r in rows if r["latency_p50_ms"] is not None]
    drift = (p50[-1] - p50[0]) if len(p50) > 1 else 0.0
    stalled = any(r["processed"] == 0 for r in rows)
    ok = growth <= max_growth_mb and not stalled
    text = (f"RSS growth after warm-up {growth:+.1f} MB (limit {max_growth_mb:g}); latency p50 drift "
            f"{drift:+.1f} ms ({p50[0] if p50 else '-'} -> {p50[-1] if p50 else '-'} ms); "
            f"{'stalled interval(s)!' if stalled else 'frames every interval'} -> {'PASS' if ok else 'FAIL'}")
    result.update(rss_growth_mb=round(growth, 1), latency_p50_drift_ms=round(drift, 1), passed=ok)
    return ok, text


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per report line (default 60)")
    ap.add_argument("--avatar", default=str(ROOT / "assets" / "astronaut.png"), help="photo or .avatar pack")
    ap.add_argument("--source", default=str(ROOT / "assets" / "pexels_woman.mp4"), help="clip (looped) or lavfi:...")
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--weights")
    ap.add_argument("--sink", action="append", default=[], help="extra sinks (e.g. out.mp4), as run_stream.py")
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from streamer.reenact.engine import Engine
    from streamer.stream.sinks import open_sink
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    engine = Engine(args.zoo, args.weights, log=log, progress=False)
    reenactor = engine.make_reenactor(args.avatar)
    sinks = [open_sink(s, size=(256, 256), fps=30, live=True) for s in args.sink]
    log(f"soak: {args.minutes:g} min, {args.source} (looped) -> reenactor -> sinks; RSS {rss_mb():.0f} MB at start")
    result = asyncio.run(soak(reenactor, args.source, args.minutes, args.interval, sinks, log))
    ok, text = verdict(result, args.max_growth_mb)
    print(text)
    if args.json:
        save_json(args.json, result)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
