"""A real browser on the WebRTC page: headless Chromium sends a fake camera (a .y4m made from the bundled
clip) and must get reenacted frames back; it then watches the server's own stream. Read through the
DevTools protocol (a tiny client over aiohttp's websocket). Skipped when Chromium is not installed."""
import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import av
import pytest

from streamer.stream.pipeline import Pipeline
from streamer.stream.sources import Capture, open_source, parse_source
from streamer.testing.fakes import FakeReenactor
from tests.stream_support import served

CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")


def make_y4m(path: Path, frames: int = 72) -> Path:
    """The first frames of the bundled clip as raw YUV4MPEG2 (what Chromium's fake camera plays)."""
    with av.open(str(CLIP)) as src, av.open(str(path), "w", format="yuv4mpegpipe") as out:
        s = out.add_stream("rawvideo", rate=24)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        for k, f in enumerate(src.decode(video=0)):
            if k >= frames:
                break
            f = f.reformat(format="yuv420p")
            f.pts = None
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


class Chromium:
    def __init__(self, tmp: Path, url: str, y4m: Path | None):
        self.tmp, self.url, self.y4m = tmp, url, y4m
        self.proc = None
        self.ws = None
        self._id = 0

    async def __aenter__(self):
        profile = self.tmp / "profile"
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", "--remote-debugging-port=0"]
        if self.y4m:
            args.append(f"--use-file-for-fake-video-capture={self.y4m}")
        self.log = open(self.tmp / "chromium.log", "wb")
        self.proc = await asyncio.create_subprocess_exec(*args, self.url, stdout=self.log, stderr=self.log,
                                                         start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        self.http = aiohttp.ClientSession()
        for _ in range(100):
            async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def eval(self, expression: str):
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}})
        while True:
            msg = await self.ws.receive_json(timeout=10)
            if msg.get("id") == self._id:
                return msg["result"]["result"].get("value")

    async def stats(self) -> dict:
        v = await self.eval("JSON.stringify(window.reenactStats || null)")
        return json.loads(v) if v else {}

    async def wait_for(self, cond, timeout=45.0) -> dict:
        t_end = time.perf_counter() + timeout
        s = {}
        while time.perf_counter() < t_end:
            s = await self.stats()
            if s and cond(s):
                return s
            await asyncio.sleep(0.5)
        return s

    async def __aexit__(self, *exc):
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)     # the browser and the helpers it started
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        self.log.close()


def enough(s):
    return s.get("framesDecoded", 0) >= 30 and s.get("distinctFrames", 0) >= 3


def magenta(corner):
    return corner is not None and abs(corner[0] - 255) < 50 and corner[1] < 60 and abs(corner[2] - 255) < 50


def test_browser_camera_gets_reenacted_video(tmp_path):
    y4m = make_y4m(tmp_path / "camera.y4m")
    made = []

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    async def main():
        from streamer.web.webrtc import allow_loopback_candidates
        allow_loopback_candidates()        # as run_live does for a loopback server
        async with served(factory) as srv:
            async with Chromium(tmp_path, f"{srv.url}/?autostart=send", y4m) as browser:
                s = await browser.wait_for(enough)
                peers = [p.snapshot() for p in srv.peers.sessions.values()]
                log = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                return s, peers, log

    s, peers, log = asyncio.run(main())
    assert enough(s), (s, log)
    assert s["state"] == "connected" and not s["error"]
    assert magenta(s["corner"]), s                     # the fake engine's marker: reenacted, not echoed
    assert s["width"] > 0 and s["height"] > 0
    assert len(made) == 1 and made[0].calls >= 30     # the browser's camera drove this peer's engine
    assert peers[0]["mode"] == "drive" and peers[0]["received"] >= 30
    assert made[0].seen_shapes and all(sh[2] == 3 for sh in made[0].seen_shapes)


def test_browser_watches_server_stream(tmp_path):
    async def main():
        from streamer.web.webrtc import allow_loopback_candidates
        allow_loopback_candidates()
        loop = asyncio.get_running_loop()
        spec = parse_source(str(CLIP), size=(640, 360))
        pipe = Pipeline(FakeReenactor())
        cap = Capture(lambda: open_source(spec), label="clip")
        run = asyncio.ensure_future(pipe.run())
        cap.start(loop, pipe.input)
        try:
            async with served(FakeReenactor, server_pipeline=pipe) as srv:
                async with Chromium(tmp_path, f"{srv.url}/?autostart=watch", None) as browser:
                    s = await browser.wait_for(enough)
                    log = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                    return s, pipe.stats.processed, log
        finally:
            await asyncio.to_thread(cap.stop)
            pipe.close()
            await run

    s, processed, log = asyncio.run(main())
    assert enough(s), (s, log)
    assert magenta(s["corner"]) and processed >= 30
