"""A scripted WebRTC client (aiortc) for tests and the benchmark: sends a synthetic camera with a
frame-number barcode, receives the reenacted stream, and measures end-to-end latency by reading the
barcode back (FakeReenactor inverts colours, so the barcode survives it, inverted)."""
from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engines.core.frames import decoded, frame_rgb
from streamer.web.webrtc import rtc_configuration

BITS, CELL = 16, 24   # 14-bit frame number + 2 parity bits, in 24-pixel cells along the top-left edge


def _code(n: int) -> list[int]:
    v = n & 0x3FFF
    bits = [(v >> i) & 1 for i in range(14)]
    return bits + [sum(bits[:7]) & 1, sum(bits[7:]) & 1]


def stamp(img: np.ndarray, n: int) -> None:
    for i, b in enumerate(_code(n)):
        img[:CELL, i * CELL:(i + 1) * CELL] = 255 if b else 0


def stamped(frames: list[np.ndarray], n: int) -> np.ndarray:
    """Frame n of the looped `frames`, a copy with n stamped on it."""
    img = frames[n % len(frames)].copy()
    stamp(img, n)
    return img


def read_stamp(img: np.ndarray, inverted: bool = True) -> int | None:
    """The frame number, or None if the cells don't decode with valid parity."""
    if img.shape[0] < CELL or img.shape[1] < BITS * CELL:
        return None
    c = CELL // 2
    means = [img[c - 4:c + 4, i * CELL + c - 4:i * CELL + c + 4].mean() for i in range(BITS)]
    if any(40 < m < 215 for m in means):   # not a clean black/white cell: no barcode here
        return None
    bits = [int((m < 128) if inverted else (m >= 128)) for m in means]
    if bits[14] != sum(bits[:7]) & 1 or bits[15] != sum(bits[7:14]) & 1:
        return None
    return sum(b << i for i, b in enumerate(bits[:14]))


class StampedCameraTrack(MediaStreamTrack):
    """Plays `frames` (a list of RGB arrays, looped) at `fps`, stamping each with its number and
    remembering when it was sent."""
    kind = "video"
    period = 1 << 14               # stamps count modulo this (14 bits)

    def __init__(self, frames: list[np.ndarray], fps: float = 30.0):
        super().__init__()
        self.frames, self.fps = frames, fps
        self.n = 0
        self.sent: dict[int, float] = {}
        self._t0: float | None = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.perf_counter()
        delay = self._t0 + self.n / self.fps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        out = self._next()
        out.pts, out.time_base = int(self.n * 90000 / self.fps), fractions.Fraction(1, 90000)
        self.sent[self.n % self.period] = time.perf_counter()
        if len(self.sent) > 2000:
            self.sent.pop(next(iter(self.sent)))
        self.n += 1
        return out

    def _next(self):
        return av.VideoFrame.from_ndarray(stamped(self.frames, self.n), format="rgb24")


class EncodedCameraTrack(StampedCameraTrack):
    """The same camera sent as VP8 packets encoded once (vp8_loop), as a browser on another machine
    sends them: the receiver decodes every frame as before, but the sender spends no CPU encoding, so
    a benchmark running its clients on the server's own cores measures the server, not the clients."""

    def __init__(self, packets: list[bytes], fps: float = 30.0):
        super().__init__([], fps)
        self.packets, self.period = packets, len(packets)

    def _next(self):
        return av.Packet(self.packets[self.n % self.period])


def vp8_loop(frames: list[np.ndarray], fps: float = 30.0, length: int = 300, keyframe_every: int = 30,
             bitrate: int = 500_000) -> list[bytes]:
    """`length` stamped frames (0..length-1) of the looped `frames`, VP8-encoded as aiortc encodes a
    camera (its default 500 kbps, realtime, constant rate), with a keyframe every `keyframe_every`
    frames (aiortc answers a receiver's keyframe request; a loop cannot, so it sends them anyway)."""
    h, w = frames[0].shape[:2]
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuv420p"
    codec.bit_rate, codec.gop_size, codec.qmin, codec.qmax = bitrate, keyframe_every, 2, 56
    codec.time_base = fractions.Fraction(1, round(fps))
    codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0", "bufsize": str(bitrate),
                     "minrate": str(bitrate), "maxrate": str(bitrate), "partitions": "0"}
    out = []
    for n in range(length):
        frame = av.VideoFrame.from_ndarray(stamped(frames, n), format="rgb24").reformat(format="yuv420p")
        frame.pts = n
        packets = codec.encode(frame)
        if len(packets) != 1:      # realtime, no lag: one packet per frame, or the loop's stamps drift
            raise RuntimeError(f"libvpx gave {len(packets)} packets for frame {n}")
        out.append(bytes(packets[0]))
    return out


def clip_frames(path: str, count: int = 72, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The clip's first `count` frames, upright as shown and at `size` (w, h) if given: a camera's view."""
    return [frame_rgb(f, size) for _, _, f in decoded(Path(path), count)]


class ClientPeer:
    """One scripted browser. send=None: a receive-only offer (watch the server stream)."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession, *, send: MediaStreamTrack | None = None,
                 token: str | None = None, avatar: str | None = None, keep_frames: int = 0):
        self.base, self.http, self.send = base_url.rstrip("/"), http, send
        self.headers = {"X-Token": token} if token else {}
        self.avatar = avatar
        self.keep_frames = keep_frames
        self.pc: RTCPeerConnection | None = None
        self.peer_id: str | None = None
        self.received: list[float] = []          # receive times
        self.latencies_ms: list[float] = []      # barcode round trip (send -> decoded here)
        self.frames: list[np.ndarray] = []       # the first keep_frames received images
        self._task: asyncio.Task | None = None
        self._track_ready = asyncio.Event()
        self._remote = None

    async def connect(self) -> dict:
        self.pc = RTCPeerConnection(rtc_configuration())

        @self.pc.on("track")
        def _on_track(track):
            if track.kind == "video":
                self._remote = track
                self._track_ready.set()

        if self.send is not None:
            self.pc.addTrack(self.send)
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        if self.avatar:
            body["avatar"] = self.avatar
        async with self.http.post(f"{self.base}/offer", json=body, headers=self.headers) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"offer refused ({r.status}): {answer.get('error')}")
        self.peer_id = answer["peer"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await self._track_ready.wait()
        self._task = asyncio.ensure_future(self._consume())
        return answer

    async def _consume(self) -> None:
        while True:
            try:
                frame = await self._remote.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            self.received.append(now)
            need_image = len(self.frames) < self.keep_frames or isinstance(self.send, StampedCameraTrack)
            if not need_image:
                continue
            img = frame.to_ndarray(format="rgb24")
            if len(self.frames) < self.keep_frames:
                self.frames.append(img)
            if isinstance(self.send, StampedCameraTrack):
                n = read_stamp(img)
                if n is not None and n in self.send.sent:
                    self.latencies_ms.append((now - self.send.sent.pop(n)) * 1000.0)

    async def wait_frames(self, n: int, timeout: float = 20.0) -> None:
        t_end = time.perf_counter() + timeout
        while len(self.received) < n:
            if time.perf_counter() > t_end:
                raise TimeoutError(f"got {len(self.received)} of {n} frames")
            await asyncio.sleep(0.02)

    async def control(self, action: str, **extra) -> dict:
        body = {"action": action, **extra}
        if self.send is not None:
            body["peer"] = self.peer_id
        async with self.http.post(f"{self.base}/control", json=body, headers=self.headers) as r:
            return await r.json()

    async def close(self, tell_server: bool = True) -> None:
        if tell_server and self.peer_id:
            try:
                async with self.http.post(f"{self.base}/close", json={"peer": self.peer_id},
                                          headers=self.headers) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.send is not None:
            self.send.stop()
        if self.pc is not None:
            await self.pc.close()
        self._remote = self.pc = self._task = None
