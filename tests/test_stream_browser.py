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
    def __init__(self, tmp: Path, url: str, y4m: Path | None, size: tuple[int, int] = (1280, 800)):
        self.tmp, self.url, self.y4m, self.size = tmp, url, y4m, size
        self.proc = None
        self.ws = None
        self._id = 0

    async def __aenter__(self):
        profile = self.tmp / "profile"
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}", "--hide-scrollbars"]
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

    async def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        """One DevTools command -> its result (events arriving meanwhile are skipped)."""
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params or {}})
        while True:
            msg = await self.ws.receive_json(timeout=timeout)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expression: str):
        res = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True}, timeout=10)
        return res["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """The page as the window shows it (PNG, the window's size)."""
        import base64
        await self.call("Emulation.setDeviceMetricsOverride", {"width": self.size[0], "height": self.size[1],
                                                               "deviceScaleFactor": 1, "mobile": False})
        data = (await self.call("Page.captureScreenshot", {"format": "png"}))["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    async def choose_file(self, selector: str, path: Path) -> None:
        """Pick `path` in the page's <input type=file> as a user would (fires its change event)."""
        doc = await self.call("DOM.getDocument")
        node = await self.call("DOM.querySelector", {"nodeId": doc["root"]["nodeId"], "selector": selector})
        await self.call("DOM.setFileInputFiles", {"nodeId": node["nodeId"], "files": [str(Path(path).resolve())]})

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


def test_page_controls_and_an_upload_during_a_call(tmp_path):
    """The page's controls follow what can work (no server source: watching is disabled; controls only
    in a call), the camera picker lists the fake camera, the mirror toggle flips the views, and a photo
    chosen during a call shows its file name and its preparation's progress, then replaces the avatar."""
    import threading

    from streamer.testing.fakes import avatar_color
    from tests.stream_support import png_bytes

    astronaut = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"
    release = threading.Event()

    def prepare(path, report):
        if Path(path) != astronaut:             # an upload: a slow enrollment, held until released
            for i in range(4):
                report("tune", i, 10)
            release.wait(60)

    photo = next(p for seed in range(50)
                 if avatar_color((p := tmp_path / f"my holiday {seed}.png").write_bytes(png_bytes(seed)) and p)
                 != avatar_color(astronaut))
    y4m = make_y4m(tmp_path / "camera.y4m")
    js_state = """JSON.stringify({watch: $('watch').disabled, send: $('send').disabled, hangup: $('hangup').disabled,
        reset: $('reset').disabled, sbs: $('sbs').disabled, cameras: $('camera').options.length,
        mirrored: $('remote').classList.contains('mirrored'), name: $('avatar-name').textContent,
        avatarState: $('avatar-state').textContent, bar: $('avatar-progress').hidden ? null : $('avatar-progress').value,
        fps: $('fps').textContent, latency: $('latency').textContent, thumb: !$('thumb').hidden,
        log: $('log').textContent})""".replace("$(", "document.getElementById(")

    async def main():
        from streamer.web.webrtc import allow_loopback_candidates
        allow_loopback_candidates()
        async with served(FakeReenactor, default_avatar=astronaut, prepare=prepare) as srv:
            async with Chromium(tmp_path, f"{srv.url}/", y4m) as b:
                await b.wait_for(lambda s: s.get("polls", 0) >= 1 and s.get("cameras", 0) >= 1)
                idle = json.loads(await b.eval(js_state))
                await b.eval("document.getElementById('send').click()")
                s = await b.wait_for(lambda s: enough(s) and s.get("serverFps") is not None)
                await asyncio.sleep(1.5)               # one more status poll with the numbers
                call = json.loads(await b.eval(js_state))
                await b.eval("document.getElementById('mirror').click()")
                unmirrored = json.loads(await b.eval(js_state))["mirrored"]
                await b.choose_file("#avatar", photo)
                await b.wait_for(lambda s: (s.get("avatar") or {}).get("stage") == "tune")
                await asyncio.sleep(1.5)
                uploading = json.loads(await b.eval(js_state))
                corner_before = (await b.stats())["corner"]
                release.set()
                after = await b.wait_for(lambda s: s.get("corner") is not None and
                                         bool(np.all(np.abs(np.subtract(s["corner"], avatar_color(photo))) < 50)))
                return idle, s, call, unmirrored, uploading, corner_before, after

    import numpy as np
    idle, s, call, unmirrored, uploading, corner_before, after = asyncio.run(main())
    # idle: nothing to hang up or control; this server has no source of its own to watch
    assert idle["watch"] and idle["hangup"] and idle["reset"] and idle["sbs"] and not idle["send"]
    assert idle["cameras"] >= 1 and idle["mirrored"] and idle["name"] == "astronaut.png" and idle["thumb"]
    # in a call: hang-up and controls work, sending again does not; the session's numbers are shown
    assert s["state"] == "connected" and not s["error"]
    assert not call["hangup"] and not call["reset"] and not call["sbs"] and call["send"] and call["watch"]
    assert float(call["fps"]) > 0 and call["latency"].isdigit()
    assert unmirrored is False
    # the upload: its file name and its preparation's progress, while the call goes on
    assert uploading["name"] == photo.name and "tuning the avatar 3/10" in uploading["avatarState"]
    assert 0 < uploading["bar"] < 1 and "goes on with the current avatar" in uploading["log"]
    assert np.all(np.abs(np.subtract(corner_before, avatar_color(astronaut))) < 50)
    # ready: the call switched to it, and the page names the photo, not its stored id
    assert np.all(np.abs(np.subtract(after["corner"], avatar_color(photo))) < 50), after
    assert f"avatar: {photo.name}" in after["messages"], after["messages"]


def test_a_photo_that_cannot_be_used_says_why_and_the_page_keeps_the_default(tmp_path):
    """Chosen before a call, a photo whose preparation fails (no face) shows one line on the page, and
    the next click on Send my camera uses the server's avatar, not the failed one."""
    from engines.core.errors import UserError
    from tests.stream_support import png_bytes

    astronaut = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"

    def prepare(path, report):
        if Path(path) != astronaut:
            raise UserError(f"no face found in {Path(path).name}; use a photo with one clearly visible face")

    photo = tmp_path / "cat.png"
    photo.write_bytes(png_bytes(9))
    made = []

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    async def main():
        from streamer.web.webrtc import allow_loopback_candidates
        allow_loopback_candidates()
        async with served(factory, default_avatar=astronaut, prepare=prepare) as srv:
            async with Chromium(tmp_path, f"{srv.url}/", make_y4m(tmp_path / "camera.y4m")) as b:
                await b.wait_for(lambda s: s.get("polls", 0) >= 1)
                await b.choose_file("#avatar", photo)
                failed = await b.wait_for(lambda s: any("failed" in m for m in s["messages"]))
                shown = await b.eval("document.getElementById('log').textContent")
                await b.eval("document.getElementById('send').click()")
                s = await b.wait_for(enough)
                return failed, shown, s

    failed, shown, s = asyncio.run(main())
    assert shown.startswith("avatar cat.png failed: no face found in") and "\n" not in shown
    assert enough(s) and s["state"] == "connected" and not s["error"]
    assert [Path(r.avatar).name for r in made] == ["astronaut.png"]
