"""`python -m streamer.bench --cluster local --replicas R --sessions N`: the cost of rendering on Ray Serve
replicas instead of in the engine's own process.

The same N sessions (the product's AvatarReenactor: Net3D and motion state in this process) run twice on
the same driving clip and avatars, each session on its own thread as fast as it goes, for --seconds:
  * in-process: run_stream.py's engine (streamer.bench.sessions.run_sessions);
  * on the cluster: the same objects with the generator stage on R replicas (streamer.cluster).
Per frame on the cluster it records the round trip of the handle call and the time the frame spent
inside the replica; their difference is the hop's overhead (serialisation, Serve's routing, the object
store, the event loops). Aggregate frames/s of both runs, the image stage's p50/p95 in both, and the
hop's p50/p95. `--json` merges the run into the file under "replicas=R,sessions=N,lru=L" (L: the
avatars each replica keeps, --avatars-per-replica).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from engines.core.errors import main_guard
from streamer.bench.report import save_json
from streamer.bench.sessions import ROOT, machine, pct, rgb_frames, run_sessions
from streamer.cluster.client import ClusterReenactorFactory, import_ray
from streamer.cluster.config import ClusterConfig, add_cluster_arguments
from streamer.reenact.config import ReenactConfig


def quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "n": 0}
    return {"p50_ms": round(pct(values, 50), 2), "p95_ms": round(pct(values, 95), 2), "n": len(values)}


def run_cluster_sessions(cluster: ClusterConfig, source: Path, avatars: list[Path], n: int, seconds: float,
                         max_frames: int = 300) -> dict:
    """N sessions on the cluster, each on its own thread for `seconds`."""
    log = lambda m: print(m, file=sys.stderr)   # noqa: E731
    factory = ClusterReenactorFactory(ReenactConfig(progress=False), cluster, log=log)
    try:
        rgb, rate = rgb_frames(source, max_frames)
        sessions = [factory(avatars[i % len(avatars)]) for i in range(n)]
        for r in sessions:     # warm-up: each avatar loaded on its replica, first-call allocations
            for k in range(3):
                r.process(rgb[k], k / rate)
            r.reset_reference()
        stage = factory.engine.generator_stage
        stage.stats.hops.clear()
        image_ms: list[list[float]] = [[] for _ in range(n)]
        latency: list[list[float]] = [[] for _ in range(n)]
        failures0 = stage.stats.failures
        start = time.perf_counter() + 0.05
        stop = start + seconds

        def drive(i: int) -> None:
            r, k = sessions[i], 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                out = r.process(rgb[k % len(rgb)], k / rate)
                latency[i].append((time.perf_counter() - t0) * 1e3)
                image_ms[i].append(out.stage_ms["image"])
                k += 1

        while time.perf_counter() < start:
            time.sleep(0.001)
        workers = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = max(1e-9, time.perf_counter() - start)
        hops = list(stage.stats.hops)
        summary = stage.stats.summary()
        for r in sessions:
            r.close()
        per = [round(len(lat) / elapsed, 2) for lat in latency]
        return {"sessions": n, "replicas": cluster.replicas, "avatars_per_replica": cluster.avatars_per_replica,
                "avatars": len(set(avatars[i % len(avatars)] for i in range(n))), "seconds": round(elapsed, 2),
                "fps_per_session": per, "fps_total": round(sum(per), 2),
                "latency": quantiles([v for lat in latency for v in lat]),
                "image_stage": quantiles([v for im in image_ms for v in im]),
                "round_trip": quantiles([a for a, _ in hops]),
                "in_replica": quantiles([b for _, b in hops]),
                "hop_overhead": quantiles([a - b for a, b in hops]),
                "failures": stage.stats.failures - failures0, "front_end": summary}
    finally:
        factory.close()


def run(cluster: ClusterConfig, source: Path, avatars: list[Path], n: int, seconds: float,
        max_frames: int = 300) -> dict:
    local = run_sessions("default", source, avatars, n, seconds, None, max_frames=max_frames)
    local_image = local.get("image_stage")
    remote = run_cluster_sessions(cluster, source, avatars, n, seconds, max_frames)
    return {"in_process": {"fps_total": local["fps_total"], "fps_per_session": local["fps_per_session"],
                           "latency": local["latency"], "image_stage": local_image},
            "cluster": remote, "machine": machine(), "source": str(source),
            "avatars": [str(a) for a in avatars], "address": cluster.address}


def report(res: dict) -> None:
    c, p = res["cluster"], res["in_process"]
    print(f"{c['sessions']} sessions: in-process {p['fps_total']:.1f} frames/s in all; on {c['replicas']} replica(s) "
          f"{c['fps_total']:.1f} frames/s ({c['failures']} failed frames)")
    print(f"image stage p50/p95: in-process {p['image_stage']['p50_ms']}/{p['image_stage']['p95_ms']} ms, cluster "
          f"{c['image_stage']['p50_ms']}/{c['image_stage']['p95_ms']} ms; hop overhead (round trip - time in the "
          f"replica) {c['hop_overhead']['p50_ms']}/{c['hop_overhead']['p95_ms']} ms; {res['machine']}")


def save(res: dict, path: Path) -> None:
    """Merge this run into `path` under 'replicas=R,sessions=N,lru=L'."""
    data = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    runs = data.setdefault("runs", {})
    c = res["cluster"]
    runs[f"replicas={c['replicas']},sessions={c['sessions']},lru={c['avatars_per_replica']}"] = res
    save_json(path, data)


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamer.bench --cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=2, help="sessions at once (default 2)")
    ap.add_argument("--avatars", type=Path, nargs="+", default=[ROOT / "assets" / "astronaut.png"],
                    help="avatars (photos or packs), taken in turn")
    ap.add_argument("--source", type=Path, default=ROOT / "assets" / "pexels_woman.mp4")
    ap.add_argument("--seconds", type=float, default=10.0, help="each run's length (default 10)")
    ap.add_argument("--frames", type=int, default=300, help="frames of the clip decoded (looped)")
    ap.add_argument("--json", type=Path, help="merge the result into this file")
    add_cluster_arguments(ap)
    args = ap.parse_args(argv)
    cfg = ClusterConfig.from_args(args)
    cfg.check()
    import_ray()          # a missing ray is one line before anything runs
    res = run(cfg, args.source, args.avatars, max(1, args.sessions), args.seconds, args.frames)
    report(res)
    if args.json:
        save(res, args.json)
    return 0
