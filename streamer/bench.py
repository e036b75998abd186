"""`python -m streamer.bench --zoo default --source CLIP --json PATH`: end-to-end speed of the real
reenactor on a driving clip (decode -> face -> pose -> latent -> image -> encode), per-stage p50/p95
ms and end-to-end frames/s; JSON {fps, frames, stages: {name: {p50_ms, p95_ms}}, machine}.

`--device cuda` runs the reenactor's networks on a GPU, as `run_stream.py --device cuda` does.
Model-stage and multi-session benchmarks (`--sessions`, `--zoo vox256-random`) are in
streamer.bench_model; this module hands those flags over to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from engines.errors import UserError, main_guard

from .machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    import torch
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {platform.system()}")


def pct(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def decode(path: Path, max_frames: int | None):
    import av
    try:
        with av.open(str(path)) as c:
            rate = float(c.streams.video[0].average_rate or 30)
            frames = []
            for f in c.decode(video=0):
                frames.append(f)
                if max_frames and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError) as e:
        raise UserError(f"{path}: cannot read video ({e})") from None
    return frames, rate


def run(zoo: str, source: Path, avatar: Path, max_frames: int | None, encode: bool,
        weights=None, threads: int | None = None, device: str = "cpu") -> dict:
    import torch
    if threads:
        torch.set_num_threads(threads)
    from engines.device import describe
    from .reenact import Engine
    engine = Engine(zoo, weights, log=lambda m: print(m, file=sys.stderr), progress=False, device=device)
    reenactor = engine.make_reenactor(avatar)
    frames, rate = decode(source, max_frames)
    stages: dict[str, list[float]] = {"decode": [], "face": [], "pose": [], "latent": [], "image": []}
    if encode:
        import av
        import io
        buf = io.BytesIO()
        out = av.open(buf, "w", format="mp4")
        stream = out.add_stream("libx264", rate=round(rate))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}  # what the file sink uses
        stages["encode"] = []
    reenactor.process(frames[0].to_ndarray(format="rgb24"))  # warm-up (first-call allocations)
    reenactor.reset_reference()
    t_start = time.perf_counter()
    for f in frames:
        t0 = time.perf_counter()
        rgb = f.to_ndarray(format="rgb24")
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


@main_guard
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in argv for a in ("--sessions", "vox256-random")) or \
            any(a.startswith(("--sessions=", "--zoo=vox256-random")) for a in argv):
        from .bench_model import main as model_main
        return model_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default", choices=["default", "vox256"])
    ap.add_argument("--weights", help="vox256 weights folder")
    ap.add_argument("--source", type=Path, default=ROOT / "assets" / "pexels_woman.mp4")
    ap.add_argument("--avatar", type=Path, default=ROOT / "assets" / "astronaut.png")
    ap.add_argument("--frames", type=int, default=None, help="at most this many frames")
    ap.add_argument("--no-encode", action="store_true", help="leave H.264 encoding out")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--device", default="cpu", help="where the reenactor's networks run (cpu, cuda, cuda:N, auto)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = run(args.zoo, args.source, args.avatar, args.frames, not args.no_encode, args.weights, args.threads,
              args.device)
    for k, v in res["stages"].items():
        print(f"{k:>7}: p50 {v['p50_ms']:7.2f} ms   p95 {v['p95_ms']:7.2f} ms")
    print(f"end to end: {res['fps']:.1f} fps over {res['frames']} frames ({res['no_face']} without a face); "
          f"{res['machine']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
