"""Server robustness numbers (issue 15), all on 127.0.0.1 in one process.

    python -m streamer.bench.server uploads [--uploads 3] [--factory MODULE:FUNCTION --avatar PHOTO]
    python -m streamer.bench.server floods [--rounds 3] [--peers 8] [--factory MODULE:FUNCTION --avatar PHOTO]

uploads: one peer sends its (synthetic, 30 fps) camera and receives the reenacted stream; after a
quiet baseline, N photo-like 16-MP JPEGs (4608x3456) are uploaded at once. Printed: the peer's longest
gap between received frames in the baseline and while the uploads run, how long each upload took, and
the slowest GET /status during the uploads.

floods: `--rounds` times, `--peers` peers connect at once, stream until each has 30 frames, and hang
up; then the server's RSS once their sessions are gone and their engines closed (after `--settle` s).
`--no-trim` turns off the release of freed memory after sessions close (the behaviour before it).
The default factory is the fake engine; `--factory streamer.reenact.engine:default_zoo_factory --avatar
assets/astronaut.png` runs the default zoo (the photo enrolled once into the user cache), one engine
per peer as `run_stream.py --webrtc` does.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from pathlib import Path

import numpy as np

from streamer.bench.report import save_json

ROOT = Path(__file__).resolve().parents[2]


def big_jpeg(width: int = 4608, height: int = 3456, seed: int = 0) -> bytes:
    """A photo-like 16-MP JPEG (the bundled portrait upscaled, with sensor-like noise): 2-5 MB."""
    from PIL import Image
    img = Image.open(ROOT / "assets" / "astronaut.png").convert("RGB").resize((width, height), Image.BICUBIC)
    a = np.asarray(img).astype(np.int16)
    a += np.random.default_rng(seed).integers(-6, 7, a.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _max_gap(times: list[float], t0: float, t1: float) -> float:
    ts = [t for t in times if t0 <= t <= t1]
    edges = [t0] + ts + [t1]
    return max(b - a for a, b in zip(edges, edges[1:]))


async def bench_uploads(factory, uploads: int, baseline_s: float, avatar=None) -> dict:
    import aiohttp

    from streamer.testing.rtc_client import ClientPeer, StampedCameraTrack
    from streamer.web.config import ServeConfig
    from streamer.web.webapp import ServerParts, start_server
    photos = [big_jpeg(seed=k) for k in range(uploads)]
    frames = [np.full((240, 320, 3), v, np.uint8) for v in (60, 120, 180)]
    srv = await start_server(ServeConfig(webrtc=True, port=0), ServerParts(factory, default_avatar=avatar))
    try:
        async with aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(frames))
            await peer.connect()
            await peer.wait_frames(30)
            t_base = time.perf_counter()
            await asyncio.sleep(baseline_s)
            t_up = time.perf_counter()
            status_ms: list[float] = []
            done = asyncio.Event()

            async def probe():
                while not done.is_set():
                    t = time.perf_counter()
                    async with http.get(srv.url + "/status") as r:
                        await r.read()
                    status_ms.append((time.perf_counter() - t) * 1000)
                    await asyncio.sleep(0.1)

            async def upload(body):
                t = time.perf_counter()
                async with http.post(srv.url + "/avatar", data=body, headers={"Content-Type": "image/jpeg"}) as r:
                    await r.read()
                    return r.status, time.perf_counter() - t

            prober = asyncio.ensure_future(probe())
            results = await asyncio.gather(*(upload(b) for b in photos))
            t_end = time.perf_counter()
            done.set()
            await prober
            await asyncio.sleep(0.5)
            out = {"photo_mb": [round(len(b) / 2 ** 20, 2) for b in photos],
                   "upload_status": [s for s, _ in results],
                   "upload_s": [round(d, 2) for _, d in results],
                   "baseline_max_gap_s": round(_max_gap(peer.received, t_base, t_up), 3),
                   "uploads_max_gap_s": round(_max_gap(peer.received, t_up, t_end + 0.5), 3),
                   "status_ms_max": round(max(status_ms), 1) if status_ms else None}
            await peer.close()
            return out
    finally:
        await srv.close()


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


async def bench_floods(factory, rounds: int, peers: int, settle_s: float, trim: bool, avatar=None) -> dict:
    import gc

    import aiohttp

    from streamer.testing.rtc_client import ClientPeer, StampedCameraTrack
    from streamer.web.config import ServeConfig
    from streamer.web.webapp import ServerParts, start_server
    frames = [np.full((240, 320, 3), v, np.uint8) for v in (60, 120, 180)]
    srv = await start_server(ServeConfig(webrtc=True, port=0, max_peers=peers), ServerParts(factory, default_avatar=avatar))
    if not trim:
        srv.peers.trim_after_s = None
    out = {"rss_start_mb": round(rss_mb(), 1), "rounds": []}
    try:
        async with aiohttp.ClientSession() as http:
            for k in range(rounds):
                clients = [ClientPeer(srv.url, http, send=StampedCameraTrack(frames)) for _ in range(peers)]
                await asyncio.gather(*(c.connect() for c in clients))
                await asyncio.gather(*(c.wait_frames(30, timeout=120) for c in clients))
                peak = rss_mb()
                await asyncio.gather(*(c.close() for c in clients))
                while srv.peers.sessions:
                    await asyncio.sleep(0.1)
                gc.collect()
                await asyncio.sleep(settle_s)
                out["rounds"].append({"rss_with_peers_mb": round(peak, 1), "rss_after_mb": round(rss_mb(), 1)})
                print(f"round {k + 1}: {peers} peers, RSS {peak:.0f} MB while streaming, "
                      f"{out['rounds'][-1]['rss_after_mb']:.0f} MB after they left", flush=True)
    finally:
        await srv.close()
    return out


def main(argv=None) -> int:
    from streamer.bench.live import load_factory
    from streamer.web.webrtc import allow_loopback_candidates
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["uploads", "floods"])
    ap.add_argument("--factory", default=None, help="MODULE:FUNCTION making a reenactor (default: the fake)")
    ap.add_argument("--avatar", default=None, help="the peers' avatar (for a real engine's factory)")
    ap.add_argument("--uploads", type=int, default=3)
    ap.add_argument("--baseline", type=float, default=5.0, help="seconds of streaming before the uploads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the last session closed")
    ap.add_argument("--no-trim", action="store_true", help="do not release freed memory after sessions close")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    allow_loopback_candidates(only=True)
    factory = load_factory(args.factory)
    if args.what == "uploads":
        res = asyncio.run(bench_uploads(factory, args.uploads, args.baseline, args.avatar))
        print(f"{args.uploads} uploads of {res['photo_mb']} MB 16-MP JPEGs: HTTP {res['upload_status']} in "
              f"{res['upload_s']} s; peer's longest frame gap {res['baseline_max_gap_s']:.3f} s before, "
              f"{res['uploads_max_gap_s']:.3f} s during; slowest /status {res['status_ms_max']} ms")
    else:
        res = asyncio.run(bench_floods(factory, args.rounds, args.peers, args.settle, not args.no_trim,
                                      args.avatar))
        print(f"RSS {res['rss_start_mb']:.0f} MB at start, "
              + ", ".join(f"{r['rss_after_mb']:.0f}" for r in res["rounds"]) + " MB after each round"
              + (" (no trim)" if args.no_trim else ""))
    res.update(what=args.what, factory=args.factory or "fake", avatar=args.avatar,
               malloc_arena_max=os.environ.get("MALLOC_ARENA_MAX"))
    if args.json:
        save_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
