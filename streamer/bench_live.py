"""Streaming benchmark through the WebRTC path, all on 127.0.0.1 in one process.

    python -m streamer.bench_live [--peers 3] [--seconds 10] [--fps 30] [--factory MODULE:FUNCTION]

Three runs: one peer sending its (synthetic, 30 fps) camera and receiving the reenacted stream; N such
peers at once, each with its own reenactor; N peers watching the server's own reenacted stream (lavfi
source). Printed per run: server capture-to-publish latency p50/p95 (frame received or captured ->
handed to the encoder), the client's round trip p50/p95 (its send -> its decode, read from a barcode
in the frame; only with reenactors that keep the barcode, like the default fake), and fps per peer.
The clients share the CPU with the server, so these numbers are a lower bound for a real deployment.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from streamer.machine import cpu_model

ASSET_CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"


def _pcts(values) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def load_factory(spec: str | None, fake_delay_ms: float = 0.0):
    if not spec:
        from streamer.fakes import FakeReenactor
        return lambda avatar: FakeReenactor(avatar, delay_s=fake_delay_ms / 1000.0)
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn or "make_reenactor")


async def _run(make_reenactor, *, peers: int, watch: bool, seconds: float, warmup: float, fps: float,
               frames, avatar=None) -> dict:
    import aiohttp

    from streamer.pipeline import Pipeline, run_sink
    from streamer.rtc_client import ClientPeer, StampedCameraTrack
    from streamer.sinks import NullSink
    from streamer.sources import Capture, open_source, parse_source
    from streamer.webapp import start_server

    loop = asyncio.get_running_loop()
    pipeline = capture = None
    tasks = []
    if watch:
        h, w = frames[0].shape[:2]
        spec = parse_source("lavfi:testsrc2", size=(w, h), fps=fps)
        pipeline = Pipeline(await asyncio.to_thread(make_reenactor, avatar), name="server")
        capture = Capture(lambda: open_source(spec), label="lavfi")
        null = NullSink()
        tasks = [asyncio.ensure_future(pipeline.run()),
                 asyncio.ensure_future(run_sink(null, pipeline, pipeline.subscribe("none")))]
        capture.start(loop, pipeline.input)
    server = await start_server(make_reenactor, server_pipeline=pipeline, default_avatar=avatar,
                                max_peers=max(8, peers))
    clients = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(peers):
                send = None if watch else StampedCameraTrack(frames, fps)
                c = ClientPeer(server.url, http, send=send)
                await c.connect()
                clients.append(c)
            await asyncio.sleep(warmup)
            t0 = time.perf_counter()
            sessions = list(server.peers.sessions.values())
            stats_sources = [pipeline] if watch else [s.pipeline for s in sessions]
            for p in stats_sources:
                p.stats.latency_ms.clear()
            for c in clients:
                c.latencies_ms.clear()
            await asyncio.sleep(seconds)
            t1 = time.perf_counter()
            per_peer = []
            for c in clients:
                n = sum(1 for t in c.received if t0 <= t <= t1)
                rt50, rt95 = _pcts(c.latencies_ms)
                per_peer.append({"fps": n / (t1 - t0), "roundtrip_ms_p50": rt50, "roundtrip_ms_p95": rt95})
            server_lat = [v for p in stats_sources for v in p.stats.latency_ms]
            snap = [p.stats.snapshot() for p in stats_sources]
            for c in clients:
                await c.close()
    finally:
        if capture is not None:
            await asyncio.to_thread(capture.stop)
        if pipeline is not None:
            pipeline.close()
        await server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    c50, c95 = _pcts(server_lat)
    return {"peers": peers, "mode": "watch" if watch else "send+receive", "seconds": seconds,
            "capture_to_publish_ms_p50": c50, "capture_to_publish_ms_p95": c95,
            "per_peer": per_peer, "server_process_ms": [s["stage_ms"].get("process") for s in snap],
            "server_dropped": [s["dropped"] for s in snap]}


def bench(make_reenactor=None, *, peers: int = 3, seconds: float = 10.0, warmup: float = 3.0,
          fps: float = 30.0, size: tuple[int, int] = (640, 360), avatar=None) -> list[dict]:
    """Run the three scenarios; returns their results (also what main prints)."""
    from streamer.rtc_client import clip_frames
    from streamer.webrtc import allow_loopback_candidates

    make_reenactor = make_reenactor or load_factory(None)
    allow_loopback_candidates(only=True)
    frames = clip_frames(str(ASSET_CLIP), count=72, size=size)
    out = []
    for n, watch in ((1, False), (peers, False), (peers, True)):
        out.append(asyncio.run(_run(make_reenactor, peers=n, watch=watch, seconds=seconds, warmup=warmup,
                                    fps=fps, frames=frames, avatar=avatar)))
    return out


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:5.1f}"


def report(results: list[dict]) -> str:
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} | python "
             f"{platform.python_version()} | load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg")
             else f"machine: {cpu_model()}, {os.cpu_count()} CPUs"]
    for r in results:
        fps = [p["fps"] for p in r["per_peer"]]
        rt50 = [p["roundtrip_ms_p50"] for p in r["per_peer"] if p["roundtrip_ms_p50"] is not None]
        rt95 = [p["roundtrip_ms_p95"] for p in r["per_peer"] if p["roundtrip_ms_p95"] is not None]
        lines.append(
            f"{r['peers']} peer(s) {r['mode']:12s}: capture->publish p50 {_fmt(r['capture_to_publish_ms_p50'])} "
            f"p95 {_fmt(r['capture_to_publish_ms_p95'])} ms | round trip p50 "
            f"{_fmt(max(rt50) if rt50 else None)} p95 {_fmt(max(rt95) if rt95 else None)} ms | "
            f"fps per peer {', '.join(f'{f:.1f}' for f in fps)} | server dropped {sum(r['server_dropped'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", default="640x360", help="synthetic camera size WxH")
    ap.add_argument("--factory", default=None,
                    help="MODULE:FUNCTION returning a reenactor for an avatar (default: the fast fake)")
    ap.add_argument("--fake-delay-ms", type=float, default=0.0,
                    help="make the default fake engine sleep this long per frame (a heavier engine)")
    ap.add_argument("--avatar", default=None)
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    results = bench(load_factory(a.factory, a.fake_delay_ms), peers=a.peers, seconds=a.seconds, warmup=a.warmup, fps=a.fps,
                    size=(w, h), avatar=a.avatar)
    print(report(results))
    if a.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
