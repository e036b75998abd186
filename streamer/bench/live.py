"""Streaming benchmark through the WebRTC path, all on 127.0.0.1 in one process.

    python -m streamer.bench.live [--peers 3] [--seconds 10] [--fps 30] [--factory MODULE:FUNCTION]
                                  [--avatar A [B C ...]]

Three runs: one peer sending its (synthetic, 30 fps) camera and receiving the reenacted stream; N such
peers at once, each with its own reenactor; N peers watching the server's own reenacted stream (lavfi
source). Printed per run: server capture-to-publish latency p50/p95 (frame received or captured ->
handed to the encoder), the client's round trip p50/p95 (its send -> its decode, read from a barcode
in the frame; only with reenactors that keep the barcode, like the default fake), fps per peer, and the
CPU the server process (and the clients' process) used in the window, in cores and per frame received.
With several avatars the peers take them in turn (each peer its own avatar, as in a call); the avatars are
loaded (or enrolled) before the first run. Each run's window opens once every peer receives frames
(its reenactor is built) and `--warmup` seconds more have passed.
The clients share the CPU with the server, so these numbers are a lower bound for a real deployment.
By default the clients also share the server's process (and its GIL: aiortc's RTP, jitter buffer and
codec glue are Python); `--client-process` runs them in a second Python process instead, as real
peers would be — same machine and cores, no shared interpreter. `--camera once` has the clients send
a VP8 loop encoded before the run instead of encoding their cameras as they send (the server still
decodes every frame): peers on other machines would cost these cores nothing to encode.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from engines.core.errors import main_guard
from streamer.bench.machine import cpu_model

ASSET_CLIP = Path(__file__).resolve().parents[2] / "assets" / "pexels_woman.mp4"


def _pcts(values) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def load_factory(spec: str | None, fake_delay_ms: float = 0.0):
    if not spec:
        from streamer.testing.fakes import FakeReenactor
        return lambda avatar: FakeReenactor(avatar, delay_s=fake_delay_ms / 1000.0)
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn or "make_reenactor")


class PeerAvatars:
    """A factory that gives each new peer the next avatar of a list, in turn. The server asks its
    factory for its default avatar (the first of the list) for every peer that names none."""

    def __init__(self, make_reenactor, avatars: list):
        self.make, self.avatars = make_reenactor, list(avatars)
        self._next, self._lock = itertools.cycle(self.avatars), threading.Lock()
        self.stage_stats = getattr(make_reenactor, "stage_stats", None)
        self.given: list[str] = []     # the avatar of each reenactor made, in order

    def __call__(self, avatar=None, **kw):
        if avatar is None or avatar == self.avatars[0]:
            with self._lock:
                avatar = next(self._next)
                self.given.append(Path(str(avatar)).name)
        return self.make(avatar, **kw)


async def _settle(clients, timeout: float = 120.0, frames: int = 15) -> None:
    """Until every client receives frames: its reenactor is built (a new avatar's takes seconds)."""
    await asyncio.gather(*(c.wait_frames(frames, timeout) for c in clients))


async def _clients(url: str, peers: int, watch: bool, seconds: float, warmup: float, fps: float, frames,
                   mark=lambda what: None, camera: str = "live") -> list[dict]:
    """Connect `peers` client peers, let them settle `warmup` s, then count what each receives for
    `seconds`. `mark("start")` / `mark("end")` are called when the measured window opens / closes.
    camera: "live" encodes each peer's camera as it sends it, "once" sends a loop encoded beforehand."""
    import aiohttp

    from streamer.testing.rtc_client import ClientPeer, EncodedCameraTrack, StampedCameraTrack, vp8_loop
    packets = vp8_loop(frames, fps) if camera == "once" and not watch else None

    def track():
        if watch:
            return None
        return EncodedCameraTrack(packets, fps) if packets else StampedCameraTrack(frames, fps)
    clients = []
    async with aiohttp.ClientSession() as http:  # ClientPeer.close talks to the server through it
        try:
            for _ in range(peers):
                c = ClientPeer(url, http, send=track())
                await c.connect()
                clients.append(c)
            await _settle(clients)
            await asyncio.sleep(warmup)
            for c in clients:
                c.latencies_ms.clear()
            mark("start")
            t0 = time.perf_counter()
            await asyncio.sleep(seconds)
            t1 = time.perf_counter()
            mark("end")
            per_peer = []
            for c in clients:
                n = sum(1 for t in c.received if t0 <= t <= t1)
                rt50, rt95 = _pcts(c.latencies_ms)
                per_peer.append({"fps": n / (t1 - t0), "roundtrip_ms_p50": rt50, "roundtrip_ms_p95": rt95})
            return per_peer
        finally:
            for c in clients:
                await c.close()


async def _clients_elsewhere(url: str, peers: int, watch: bool, seconds: float, warmup: float, fps: float,
                             size: tuple[int, int], mark, camera: str) -> tuple[list[dict], float | None]:
    """The same clients in a child Python process; its stdout says START, END, its CPU seconds between
    them, then the JSON result. Returns (per-peer results, the clients' CPU seconds in the window)."""
    cmd = [sys.executable, "-m", "streamer.bench.live", "--clients-for", url, "--peers", str(peers),
           "--seconds", str(seconds), "--warmup", str(warmup), "--fps", str(fps), "--size", f"{size[0]}x{size[1]}", "--camera", camera]
    if watch:
        cmd.append("--watch")
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    result = cpu = None
    try:
        async for line in proc.stdout:
            line = line.decode().strip()
            if line in ("START", "END"):
                mark(line.lower())
            elif line.startswith("CPU "):
                cpu = float(line[4:])
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"client process failed (exit {proc.returncode})")
    return result, cpu


async def _run(make_reenactor, *, peers: int, watch: bool, seconds: float, warmup: float, fps: float,
               frames, avatar=None, client_process: bool = False, camera: str = "live") -> dict:
    import aiohttp

    from streamer.stream.pipeline import Pipeline, run_sink
    from streamer.stream.sinks import NullSink
    from streamer.stream.sources import Capture, open_source, parse_source
    from streamer.web.config import ServeConfig
    from streamer.web.webapp import ServerParts, start_server

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
    server = await start_server(ServeConfig(webrtc=True, port=0, max_peers=max(8, peers)),
                                ServerParts(make_reenactor, pipeline, default_avatar=avatar))
    window = {}

    # a real engine's factory says how its shared generator stage served the peers
    stage_stats = getattr(make_reenactor, "stage_stats", None)

    def mark(what):  # the clients' measured window: server statistics start afresh and end with it
        window[f"cpu_{what}"] = (time.perf_counter(), time.process_time())   # all of this process's threads
        if stage_stats is not None:
            window[f"stage_{what}"] = stage_stats()
        if what == "start":
            window["sources"] = [pipeline] if watch else [s.pipeline for s in server.peers.sessions.values()]
            for p in window["sources"]:
                p.stats.latency_ms.clear()
        else:
            window["latency"] = [v for p in window["sources"] for v in p.stats.latency_ms]
            window["snap"] = [p.stats.snapshot() for p in window["sources"]]
    try:
        if client_process:
            h, w = frames[0].shape[:2]
            per_peer, client_cpu = await _clients_elsewhere(server.url, peers, watch, seconds, warmup, fps, (w, h),
                                                            mark, camera)
        else:   # the clients' CPU is then part of the server process's
            per_peer, client_cpu = await _clients(server.url, peers, watch, seconds, warmup, fps, frames, mark,
                                                  camera), None
        server_lat, snap = window["latency"], window["snap"]
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
    stage = None
    if "stage_start" in window and "stage_end" in window:
        a, b = window["stage_start"], window["stage_end"]
        before = a["frames_per_session"]
        done = [n - before.get(k, 0) for k, n in b["frames_per_session"].items()]
        stage = {"calls": b["calls"] - a["calls"], "frames": b["frames"] - a["frames"],
                 "sessions_sharing": sum(1 for d in done if d > 0), "sessions_ever": b["sessions"]}
    wall = window["cpu_end"][0] - window["cpu_start"][0]
    server_cores = (window["cpu_end"][1] - window["cpu_start"][1]) / wall
    published = sum(p["fps"] for p in per_peer)
    cpu = {"server_cores": server_cores, "client_cores": None if client_cpu is None else client_cpu / wall,
           "server_ms_per_frame": server_cores * 1000.0 / published if published else None}
    return {"peers": peers, "avatars": getattr(make_reenactor, "given", None), "cpu": cpu, "generator_stage": stage,
            "mode": "watch" if watch else "send+receive", "seconds": seconds,
            "clients": "own process" if client_process else "server's process",
            "camera": None if watch else ("encoded as sent" if camera == "live" else "encoded once, looped"),
            "capture_to_publish_ms_p50": c50, "capture_to_publish_ms_p95": c95,
            "per_peer": per_peer, "server_process_ms": [s["stage_ms"].get("process") for s in snap],
            "server_dropped": [s["dropped"] for s in snap]}


def bench(make_reenactor=None, *, peers: int = 3, seconds: float = 10.0, warmup: float = 3.0,
          fps: float = 30.0, size: tuple[int, int] = (640, 360), avatar=None,
          client_process: bool = False, camera: str = "live") -> list[dict]:
    """Run the three scenarios; returns their results (also what main prints). avatar: one, or a list
    the peers take in turn."""
    from streamer.testing.rtc_client import clip_frames
    from streamer.web.webrtc import allow_loopback_candidates

    make_reenactor = make_reenactor or load_factory(None)
    avatars = list(avatar) if isinstance(avatar, (list, tuple)) else None
    for a in avatars or []:      # enrolled or loaded now, not while a run is measured
        if hasattr(make_reenactor, "prepare"):
            make_reenactor.prepare(a)
    allow_loopback_candidates(only=True)
    frames = clip_frames(str(ASSET_CLIP), count=72, size=size)
    out = []
    for n, watch in ((1, False), (peers, False), (peers, True)):
        make = PeerAvatars(make_reenactor, avatars) if avatars else make_reenactor   # each run from the first
        out.append(asyncio.run(_run(make, peers=n, watch=watch, seconds=seconds, warmup=warmup, fps=fps,
                                    frames=frames, avatar=avatars[0] if avatars else avatar,
                                    client_process=client_process, camera=camera)))
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
        c = r["cpu"]
        lines.append(f"    CPU: server {c['server_cores']:.2f} cores ({_fmt(c['server_ms_per_frame'])} ms a frame the "
                     f"clients received)" + ("" if c["client_cores"] is None else
                                             f", clients' process {c['client_cores']:.2f} cores"))
        if r.get("camera"):
            lines.append(f"    clients' cameras: {r['camera']}")
        if r.get("avatars"):
            lines.append(f"    avatars: {', '.join(r['avatars'])}")
        g = r.get("generator_stage")
        if g:
            lines.append(f"    generator stage: {g['calls']} calls, {g['frames']} frames, shared by "
                         f"{g['sessions_sharing']} sessions in the window")
    return "\n".join(lines)


@main_guard
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
    ap.add_argument("--avatar", nargs="+", default=None,
                    help="the avatar (photo or pack), or several: the peers take them in turn")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    ap.add_argument("--client-process", action="store_true",
                    help="run the client peers in a second Python process (as real peers would be)")
    ap.add_argument("--camera", choices=("live", "once"), default="live",
                    help="live: each client encodes its camera as it sends it (VP8, as aiortc does); once: "
                         "the clients send a loop encoded beforehand, as peers on other machines would cost "
                         "this one nothing to encode")
    ap.add_argument("--clients-for", default=None, help=argparse.SUPPRESS)  # the child of --client-process
    ap.add_argument("--watch", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    if a.clients_for:
        return _clients_child(a.clients_for, a.peers, a.watch, a.seconds, a.warmup, a.fps, (w, h), a.camera)
    results = bench(load_factory(a.factory, a.fake_delay_ms), peers=a.peers, seconds=a.seconds, warmup=a.warmup, fps=a.fps,
                    size=(w, h), avatar=a.avatar, client_process=a.client_process, camera=a.camera)
    print(report(results))
    if a.json:
        print(json.dumps(results, indent=1))
    return 0


def _clients_child(url, peers, watch, seconds, warmup, fps, size, camera) -> int:
    from streamer.testing.rtc_client import clip_frames
    from streamer.web.webrtc import allow_loopback_candidates
    allow_loopback_candidates(only=True)
    frames = None if watch else clip_frames(str(ASSET_CLIP), count=72, size=size)

    cpu = {}

    def mark(what):
        cpu[what] = time.process_time()
        print(what.upper(), flush=True)
    per_peer = asyncio.run(_clients(url, peers, watch, seconds, warmup, fps, frames, mark, camera))
    print(f"CPU {cpu['end'] - cpu['start']:.4f}", flush=True)   # this process's CPU seconds in the window
    print("RESULT " + json.dumps(per_peer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
