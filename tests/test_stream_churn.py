"""Peer churn: 50 WebRTC peers join, stream, and leave (half hang up politely, half just close their
connection). Afterwards nothing of them may remain: sessions, tasks, tracks, threads, memory."""
import asyncio
import gc
import threading

import aiohttp
import numpy as np
import psutil
from aiortc import RTCPeerConnection

from streamer.stream.pipeline import Pipeline
from streamer.testing.fakes import make_fake_reenactor
from streamer.testing.rtc_client import ClientPeer, StampedCameraTrack
from streamer.web.webrtc import PeerSession, PipelineTrack
from tests.stream_support import loopback_ice, served  # noqa: F401 (fixture)

ROUNDS, WARMUP = 50, 10


def live_objects(cls) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def test_fifty_peers_join_and_leave_without_leaks(loopback_ice):
    frames = [np.full((240, 320, 3), v, np.uint8) for v in (60, 120, 180)]
    proc = psutil.Process()

    async def wait_until(cond, timeout=10.0):
        for _ in range(int(timeout / 0.02)):
            if cond():
                return True
            await asyncio.sleep(0.02)
        return cond()

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            base_threads = threading.active_count()
            base_tasks, rss = None, {}
            for k in range(ROUNDS):
                peer = ClientPeer(srv.url, http, send=StampedCameraTrack(frames))
                await peer.connect()
                await peer.wait_frames(3)
                await peer.close(tell_server=k % 2 == 0)     # odd rounds: the server notices by itself
                assert await wait_until(lambda: not srv.peers.sessions), f"round {k}: session kept"
                if base_tasks is None:     # after round 1: includes the HTTP keep-alive connection's task
                    await asyncio.sleep(1.0)
                    base_tasks = len(asyncio.all_tasks())
                if k + 1 in (WARMUP, ROUNDS):
                    gc.collect()
                    rss[k + 1] = proc.memory_info().rss
            # aiortc finishes some transport tasks shortly after close
            await wait_until(lambda: len(asyncio.all_tasks()) <= base_tasks, timeout=10)
            return base_tasks, len(asyncio.all_tasks()), base_threads, rss

    classes = (PeerSession, PipelineTrack, Pipeline, RTCPeerConnection)
    before = {cls: live_objects(cls) for cls in classes}     # earlier tests may still hold a few
    base_tasks, tasks, base_threads, rss = asyncio.run(main())
    assert tasks <= base_tasks, f"{tasks - base_tasks} tasks left behind"
    for cls in classes:
        assert live_objects(cls) == before[cls], f"{cls.__name__} instances still alive"
    # per-peer worker threads end with their session (the default executor may keep a few workers)
    assert threading.active_count() <= base_threads + 8
    growth_mb = (rss[ROUNDS] - rss[WARMUP]) / 2 ** 20
    # 40 more peers after warm-up; a leaked peer holds decoder/encoder state and frames (>= 2 MB each)
    assert growth_mb < 25, f"RSS grew {growth_mb:.1f} MB over {ROUNDS - WARMUP} peers"
