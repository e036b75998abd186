"""WebRTC peers (aiortc): each browser either drives its own reenactor with its camera, or watches the
server's reenacted stream.

Signaling follows aiortc's examples: the page POSTs its offer {sdp, type} and gets the answer
{sdp, type} (plus `peer`, its session id for controls and hang-up). An offer whose video m-line sends
(sendrecv/sendonly) gets a session with its own pipeline and its own reenactor from the factory; a
receive-only offer subscribes to the server pipeline, if the server has a source.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import fractions
import secrets
import threading
import time
from typing import Callable

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engines.core.errors import UserError
from streamer.stream.controls import Controller
from streamer.stream.pipeline import ChannelClosed, Frame, Pipeline, _close_engine

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


def allow_loopback_candidates(only: bool = False) -> None:
    """aioice leaves 127.0.0.1 out of its host candidates, so two peers on a machine without another
    interface never connect. Add it (or, with only=True, use nothing else: tests, benchmarks)."""
    import aioice.ice as ice

    original = getattr(ice.get_host_addresses, "_original", ice.get_host_addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addrs = [] if only else list(original(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        if use_ipv4 and "127.0.0.1" not in addrs:
            addrs.append("127.0.0.1")
        return addrs

    host_addresses._original = original
    ice.get_host_addresses = host_addresses


_libc = None


def release_free_memory() -> None:
    """Hand memory freed by closed sessions back to the OS. A session's decoder, encoder, frames and
    engine free hundreds of MB in many threads' glibc arenas, which glibc keeps for reuse: without
    this the server's RSS stays at its peak after a crowd of peers has left. Blocking (tens of ms)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):   # not glibc (macOS, musl, Windows): nothing to do
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def rtc_configuration():
    """No STUN/TURN servers: aiortc's default is a public STUN server, and nothing here may reach out."""
    return RTCConfiguration(iceServers=[])


class PipelineTrack(MediaStreamTrack):
    """Outgoing video: the newest frame a pipeline published (size-1 lossy subscription, so a
    congested encoder skips frames rather than queueing them)."""
    kind = "video"

    def __init__(self, pipeline: Pipeline, label: str):
        super().__init__()
        self.pipeline, self.label = pipeline, label
        self._ch = pipeline.subscribe(label)
        self._t0: float | None = None
        self._last_pts = -1
        self.frames = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        try:
            item = await self._ch.get()
        except ChannelClosed:
            self.stop()
            raise MediaStreamError from None
        img = item.image
        h, w = img.shape[0] & ~1, img.shape[1] & ~1        # yuv420 encoders want even sizes
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:h, :w]), format="rgb24")
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        pts = max(int((now - self._t0) * 90000), self._last_pts + 1)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self._last_pts = pts
        self.frames += 1
        self.pipeline.stats.record_publish(item, self.label)   # publish = handed to the encoder
        return frame

    def stop(self) -> None:
        super().stop()
        self.pipeline.unsubscribe(self._ch)


class PeerSession:
    def __init__(self, manager: "PeerManager", pc, peer_id: str):
        self.manager, self.pc, self.id = manager, pc, peer_id
        self.mode = "new"          # 'drive' (browser camera -> own reenactor) or 'watch'
        self.pipeline: Pipeline | None = None
        self.out = None
        self.tasks: list[asyncio.Task] = []
        self.received = 0
        self.avatar = None
        self.controls: Controller | None = None
        self.deadline: asyncio.Task | None = None
        self._closed = False

    def start_drive(self, track, reenactor) -> None:
        self.mode = "drive"
        self.pipeline = Pipeline(reenactor, name=f"peer-{self.id}",
                                 status_text=lambda: "waiting for your camera...")
        self.controls = Controller(self.pipeline, self.manager.make_reenactor, current=self.avatar)
        self.out = PipelineTrack(self.pipeline, "webrtc")
        self.pc.addTrack(self.out)
        self.tasks = [asyncio.ensure_future(self._read(track)), asyncio.ensure_future(self.pipeline.run())]

    def start_watch(self, server: Pipeline) -> None:
        self.mode = "watch"
        self.out = PipelineTrack(server, f"webrtc-{self.id}")
        self.pc.addTrack(self.out)

    async def _read(self, track) -> None:
        """Drain the incoming track as fast as aiortc decodes (its queue is unbounded), keeping only
        the newest frame for the reenactor; conversion to RGB happens later, on the worker thread."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.pipeline.input.put_nowait(Frame(frame, time.perf_counter(), self.received))
            self.received += 1

    def snapshot(self) -> dict:
        d = {"peer": self.id, "mode": self.mode, "state": self.pc.connectionState,
             "sent": self.out.frames if self.out else 0, "received": self.received}
        if self.pipeline is not None:
            d.update(self.pipeline.stats.snapshot())
        return d

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.manager.sessions.pop(self.id, None)
        if self.deadline is not None:
            self.deadline.cancel()
        if self.out is not None:
            self.out.stop()
        if self.pipeline is not None:
            self.pipeline.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pc.close()
        self.tasks, self.pipeline, self.out, self.controls = [], None, None, None
        self.manager.session_closed()


class SignalingError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PeerManager:
    """All WebRTC sessions of one server."""

    def __init__(self, make_reenactor: Callable, *, default_avatar=None, server: Pipeline | None = None,
                 max_peers: int = 8, side_by_side: bool | None = None, connect_timeout_s: float = 30.0,
                 trim_after_s: float = 2.0):
        self.make_reenactor = make_reenactor
        self.connect_timeout_s = connect_timeout_s
        self.default_avatar = default_avatar
        self.server = server
        self.max_peers = max_peers
        self.side_by_side = side_by_side
        self.sessions: dict[str, PeerSession] = {}
        # engines are built here, not in the loop's default executor: an offer may wait a minute for
        # an enrollment, and waiting offers must not take the threads sinks and status frames use
        self._builder = concurrent.futures.ThreadPoolExecutor(max(1, max_peers), thread_name_prefix="engine-build")
        self.trim_after_s = trim_after_s
        self._trim: asyncio.TimerHandle | None = None

    def session_closed(self) -> None:
        """Release freed memory once sessions stop closing (their engines close on their own threads)."""
        if self.trim_after_s is None:
            return
        loop = asyncio.get_running_loop()
        if self._trim is not None:
            self._trim.cancel()
        self._trim = loop.call_later(self.trim_after_s, lambda: threading.Thread(
            target=release_free_memory, name="malloc-trim", daemon=True).start())

    async def _build_reenactor(self, session: PeerSession):
        """session's engine, off the event loop. If the session is gone by the time it is ready (the
        client hung up, the server is closing), the engine is closed, not leaked."""
        fut = asyncio.get_running_loop().run_in_executor(self._builder, self.make_reenactor, session.avatar)

        def close_orphan(f) -> None:
            if not f.cancelled() and f.exception() is None:
                _close_engine(f.result())
        try:
            reenactor = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(close_orphan)
            raise
        if session._closed:
            await asyncio.to_thread(_close_engine, reenactor)
            raise SignalingError(503, "the session was closed while its avatar was being prepared")
        return reenactor

    async def offer(self, sdp: str, type_: str, avatar=None) -> dict:
        if type_ != "offer" or not isinstance(sdp, str) or "m=video" not in sdp:
            raise SignalingError(400, "expected {sdp, type: 'offer'} with a video m-line")
        if len(self.sessions) >= self.max_peers:
            raise SignalingError(503, f"too many peers (max {self.max_peers})")
        pc = RTCPeerConnection(rtc_configuration())
        session = PeerSession(self, pc, secrets.token_hex(6))
        self.sessions[session.id] = session
        incoming = []
        pc.on("track", lambda t: incoming.append(t) if t.kind == "video" else None)

        @pc.on("connectionstatechange")
        async def _state():
            if pc.connectionState == "connected" and session.deadline is not None:
                session.deadline.cancel()
                session.deadline = None
            if pc.connectionState in ("failed", "closed"):
                await session.close()

        async def _setup_deadline():
            # a peer that never connects must not hold its engine until ICE gives up on its own
            await asyncio.sleep(self.connect_timeout_s)
            session.deadline = None
            await session.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
            if incoming:
                session.avatar = avatar or self.default_avatar
                reenactor = await self._build_reenactor(session)   # enrolling a photo: ~a minute
                if self.side_by_side is not None:
                    reenactor.side_by_side = self.side_by_side
                session.start_drive(incoming[0], reenactor)
            elif self.server is not None:
                session.start_watch(self.server)
            else:
                raise SignalingError(400, "this server has no video source of its own: send your camera "
                                          "(an offer that sends video), or start it with --source")
            await pc.setLocalDescription(await pc.createAnswer())
        except SignalingError:
            await session.close()
            raise
        except UserError as e:
            await session.close()
            raise SignalingError(400, str(e)) from None
        except BaseException as e:
            await session.close()
            if isinstance(e, Exception):
                raise SignalingError(400, f"bad offer: {type(e).__name__}: {str(e)[:200]}") from None
            raise                                   # cancelled (server closing)
        # the peer has `connect_timeout_s` from now, when it gets its answer (not from its offer: the
        # engine may have taken a minute to enroll the avatar)
        if pc.connectionState != "connected":
            session.deadline = asyncio.ensure_future(_setup_deadline())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "peer": session.id}

    async def close(self, peer_id: str) -> bool:
        s = self.sessions.get(peer_id)
        if s is None:
            return False
        await s.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)

    async def shutdown(self) -> None:
        """close_all, and no more sessions (server exit)."""
        await self.close_all()
        if self._trim is not None:
            self._trim.cancel()
        self._builder.shutdown(wait=False, cancel_futures=True)
