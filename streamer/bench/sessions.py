"""`python -m streamer.bench --zoo default --source CLIP --json PATH`: end-to-end speed of the real
reenactor on a driving clip (decode -> face -> pose -> latent -> image -> encode), per-stage p50/p95
ms and end-to-end frames/s; JSON {fps, frames, stages: {name: {p50_ms, p95_ms}}, machine}.

`--sessions N`: N sessions at once on one Engine, each on its own thread with its own avatar slot, as
WebRTC peers run (the same Engine and AvatarReenactor objects run_stream.py builds): frames/s per
session and in all, latency p50/p95, and the shared generator stage's scheduler statistics (calls,
mean batch, frames per session). `--fps F` paces each session like a camera (default: as fast as it
can). `--device cuda` runs the reenactor's networks on a GPU, as `run_stream.py --device cuda` does.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from engines.core.errors import UserError, main_guard
from engines.core.frames import decoded, frame_rate, frame_rgb
from streamer.bench.machine import cpu_model
from streamer.bench.report import save_json
from streamer.reenact.config import NET3D_CHOICES

ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    import torch
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {platform.system()}")


def pct(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def rgb_frames(path: Path, max_frames: int | None) -> tuple[list, float]:
    """A clip's frames as RGB arrays and its frame rate. A `.npz` (arrays `frames` uint8 [N, H, W, 3] and
    `rate`, scripts/gpu_bench.sh --prep) needs no video decoder, for machines without PyAV."""
    if path.suffix == ".npz":
        try:
            with np.load(path) as z:
                frames, rate = list(z["frames"][:max_frames]), float(z["rate"])
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"{path}: not a frames file (arrays 'frames' and 'rate'): {e}") from None
        if not frames or frames[0].ndim != 3 or frames[0].shape[2] != 3 or frames[0].dtype != np.uint8:
            raise UserError(f"{path}: 'frames' must be uint8 [N, H, W, 3] with N >= 1")
        return frames, rate
    frames, rate = decode(path, max_frames)
    return [frame_rgb(f) for f in frames], rate


def decode(path: Path, max_frames: int | None) -> tuple[list, float]:
    """The clip's frames as stored (their conversion is timed as the decode stage) and its frame rate."""
    return [f for _, _, f in decoded(path, max_frames)], frame_rate(path)


def run(zoo: str, source: Path, avatar: Path, max_frames: int | None, encode: bool,
        weights=None, threads: int | None = None, device: str = "cpu", net3d: str = "auto") -> dict:
    import torch
    if threads:
        torch.set_num_threads(threads)
    from engines.core.device import describe
    from streamer.reenact.engine import Engine
    engine = Engine(zoo, weights, log=lambda m: print(m, file=sys.stderr), progress=False, device=device,
                    net3d=net3d)
    reenactor = engine.make_reenactor(avatar)
    frames, rate = decode(source, max_frames)
    stages: dict[str, list[float]] = {"decode": [], "face": [], "pose": [], "latent": [], "image": []}
    if encode:
        import io

        import av
        buf = io.BytesIO()
        out = av.open(buf, "w", format="mp4")
        stream = out.add_stream("libx264", rate=round(rate))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}  # what the file sink uses
        stages["encode"] = []
    reenactor.process(frame_rgb(frames[0]))  # warm-up (first-call allocations)
    reenactor.reset_reference()
    t_start = time.perf_counter()
    for f in frames:
        t0 = time.perf_counter()
        rgb = frame_rgb(f)
        stages["decode"].append((time.perf_counter() - t0) * 1e3)
        o = reenactor.process(rgb)
        for k, v in o.stage_ms.items():
            stages.setdefault(k, []).append(v)
        if encode:
            t1 = time.perf_counter()
            if not stream.width:
                stream.width, stream.height = o.image.shape[1], o.image.shape[0]
            for pkt in stream.encode(av.VideoFrame.from_ndarray(o.image, format="rgb24")):
                out.mux(pkt)
            stages["encode"].append((time.perf_counter() - t1) * 1e3)
    seconds = time.perf_counter() - t_start
    if encode:
        for pkt in stream.encode():
            out.mux(pkt)
        out.close()
    reenactor.close()
    return {"fps": round(len(frames) / seconds, 2), "frames": len(frames),
            "no_face": reenactor.no_face, "source_fps": rate,
            "stages": {k: {"p50_ms": round(pct(v, 50), 3), "p95_ms": round(pct(v, 95), 3)}
                       for k, v in stages.items() if v},
            "machine": machine(), "device": describe(engine.device), "zoo": zoo, "source": str(source)}


def in_window(stats, calls0: int, frames0: int) -> dict:
    """A shared stage's scheduler summary, its calls and frames counted from (calls0, frames0) on."""
    out = stats.summary()
    out.update(calls=stats.batches - calls0, frames=stats.frames - frames0)
    out["mean_batch"] = round(out["frames"] / max(1, out["calls"]), 2)
    return out


def run_sessions(zoo: str, source: Path, avatars: list[Path], n: int, seconds: float, fps: float | None,
                 weights=None, threads: int | None = None, device: str = "cpu", max_frames: int = 300,
                 net3d: str = "auto", warmup: float = 0.0) -> dict:
    """N sessions on one Engine, each driven by `source` from its own thread, for `seconds`: the
    factory run_stream.py builds, with run_stream's defaults (one torch thread unless `threads`)."""
    import threading

    from engines.core.device import describe
    from streamer.reenact.config import ReenactConfig
    from streamer.reenact.engine import ReenactorFactory
    factory = ReenactorFactory(ReenactConfig(zoo=zoo, weights=weights, device=device, threads=threads or 1,
                                             progress=False, net3d=net3d), log=lambda m: print(m, file=sys.stderr))
    engine = factory.engine
    rgb, rate = rgb_frames(source, max_frames)
    sessions = [factory(avatars[i % len(avatars)]) for i in range(n)]
    for r in sessions:   # warm-up (first-call allocations), then the driver's reference again
        r.process(rgb[0], 0.0)
        r.reset_reference()
    latency: list[list[float]] = [[] for _ in range(n)]
    image_ms: list[list[float]] = [[] for _ in range(n)]
    media = [0.0] * n   # each session's last media time: it never goes back

    def drive(i: int, start: float, stop: float, media0: float) -> None:
        r, k = sessions[i], 0
        while True:
            due = start + k / fps if fps else time.perf_counter()
            if due > stop:
                return
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            if t0 > stop:
                return
            media[i] = media0 + k / rate
            out = r.process(rgb[k % len(rgb)], media[i])
            latency[i].append((time.perf_counter() - t0) * 1e3)
            image_ms[i].append(out.stage_ms["image"])
            k += 1
            if fps:   # a camera does not queue: frames that came while this one ran are skipped
                k = max(k, int((time.perf_counter() - start) * fps))

    def phase(seconds: float, media0: float = 0.0) -> tuple[float, float]:
        start = time.perf_counter() + 0.05
        workers = [threading.Thread(target=drive, args=(i, start, start + seconds, media0), daemon=True)
                   for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return start, start + seconds

    if warmup > 0:   # the sessions together: each batch size they make builds its engine (GPU) here
        phase(warmup)
        for lat, im in zip(latency, image_ms):
            lat.clear()
            im.clear()
        for r in sessions:
            r.reset_reference()
    stats = engine.generator_stage.stats
    calls0, frames0 = stats.batches, stats.frames
    n3d = engine.net3d_stage.stats if engine.net3d_stage is not None else None
    n3d0 = (n3d.batches, n3d.frames) if n3d is not None else None
    start, stop = phase(seconds, media0=max(media) + 1.0)
    elapsed = max(1e-9, min(time.perf_counter(), stop) - start)
    for r in sessions:
        r.close()
    shared = in_window(stats, calls0, frames0)
    net3d = in_window(n3d, *n3d0) if n3d is not None else None
    everything = [v for lat in latency for v in lat]
    images = [v for im in image_ms for v in im]
    per = [round(len(lat) / elapsed, 2) for lat in latency]
    return {"sessions": n, "fps_target": fps, "seconds": round(elapsed, 2),
            "fps_per_session": per, "fps_total": round(sum(per), 2),
            "latency": {"p50_ms": round(pct(everything, 50), 2), "p95_ms": round(pct(everything, 95), 2)},
            "image_stage": {"p50_ms": round(pct(images, 50), 2), "p95_ms": round(pct(images, 95), 2)},
            "generator_stage": shared, "max_batch": engine.generator_stage.max_batch,
            "net3d_stage": net3d or "mediapipe (one runtime per session)",
            "engines": engine.generator_stage.engines() + (engine.net3d_stage.engines() if n3d is not None else []),
            "machine": machine(), "device": describe(engine.device), "zoo": zoo, "source": str(source),
            "avatars": [str(a) for a in avatars]}


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default", choices=["default", "vox256"])
    ap.add_argument("--weights", help="vox256 weights folder")
    ap.add_argument("--source", type=Path, default=ROOT / "assets" / "pexels_woman.mp4")
    ap.add_argument("--avatar", type=Path, default=ROOT / "assets" / "astronaut.png")
    ap.add_argument("--frames", type=int, default=None, help="at most this many frames")
    ap.add_argument("--no-encode", action="store_true", help="leave H.264 encoding out")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--device", default="cpu", help="where the reenactor's networks run (cpu, cuda, cuda:N, auto)")
    ap.add_argument("--net3d", default="auto", choices=NET3D_CHOICES,
                    help="the face reader (run_stream's --net3d): auto = the batched torch port on a GPU")
    ap.add_argument("--sessions", type=int, default=0, help="N sessions at once on one engine (see above)")
    ap.add_argument("--avatars", type=Path, nargs="+", help="with --sessions: avatars, taken in turn "
                                                            "(default: --avatar for every session)")
    ap.add_argument("--seconds", type=float, default=10.0, help="with --sessions: how long (default 10)")
    ap.add_argument("--fps", type=float, default=None, help="with --sessions: pace each session like a camera")
    ap.add_argument("--warmup", type=float, default=0.0,
                    help="with --sessions: seconds run together before measuring (a GPU builds an engine for "
                         "each batch size as it first occurs)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.sessions:
        res = run_sessions(args.zoo, args.source, args.avatars or [args.avatar], args.sessions, args.seconds,
                           args.fps, args.weights, args.threads, args.device, args.frames or 300, args.net3d,
                           args.warmup)
        g = res["generator_stage"]
        print(f"{res['sessions']} sessions on {res['device']}: {res['fps_total']:.1f} frames/s in all, per session "
              f"{min(res['fps_per_session']):.1f}..{max(res['fps_per_session']):.1f}; latency p50 "
              f"{res['latency']['p50_ms']} ms p95 {res['latency']['p95_ms']} ms")
        print(f"generator stage: {g['calls']} calls for {g['frames']} frames of {g['sessions']} sessions "
              f"(mean batch {g['mean_batch']}, max {res['max_batch']}); {res['machine']}")
        n = res["net3d_stage"]
        print(f"net3d stage: {n['calls']} calls for {n['frames']} frames of {n['sessions']} sessions "
              f"(mean batch {n['mean_batch']})" if isinstance(n, dict) else f"net3d: {n}")
    else:
        res = run(args.zoo, args.source, args.avatar, args.frames, not args.no_encode, args.weights,
                  args.threads, args.device, args.net3d)
        for k, v in res["stages"].items():
            print(f"{k:>7}: p50 {v['p50_ms']:7.2f} ms   p95 {v['p95_ms']:7.2f} ms")
        print(f"end to end: {res['fps']:.1f} fps over {res['frames']} frames ({res['no_face']} without a face); "
              f"{res['machine']}")
    if args.json:
        save_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
