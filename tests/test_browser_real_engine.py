"""The real default-zoo reenactor behind the WebRTC page, driven by headless Chromium's fake camera:
what comes back is the avatar (256x256 generated face, not the 640x360 camera echoed) and it moves."""
import asyncio
from pathlib import Path

import pytest

from engines.core.photo import read_photo
from streamer.avatar.enroll import Enroller
from streamer.reenact.engine import Engine
from tests.stream_support import served
from tests.test_stream_browser import CHROMIUM, Chromium, enough, make_y4m

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
              pytest.mark.slow]   # a real engine behind a real browser: more than ~30 s


def test_browser_camera_drives_the_real_avatar(tmp_path):
    engine = Engine("default", log=lambda m: None, progress=False)
    pack = Enroller(engine.zoo, progress=False, log=lambda m: None).enroll(
        read_photo(ASTRONAUT), "astronaut.png", invert_steps=40, tune_steps=60)
    pack_path = tmp_path / "astro.avatar"
    pack.save(pack_path)
    made = []

    def factory(avatar):
        made.append(engine.make_reenactor(pack_path))
        return made[-1]

    y4m = make_y4m(tmp_path / "camera.y4m")

    async def main():
        from streamer.web.webrtc import allow_loopback_candidates
        allow_loopback_candidates()
        async with served(factory) as srv:
            async with Chromium(tmp_path, f"{srv.url}/?autostart=send", y4m) as browser:
                s = await browser.wait_for(enough, timeout=90)
                peers = [p.snapshot() for p in srv.peers.sessions.values()]
                return s, peers

    s, peers = asyncio.run(main())
    assert enough(s), s
    assert s["state"] == "connected" and not s["error"]
    assert (s["width"], s["height"]) == (256, 256)          # the avatar, not the camera
    assert len(made) == 1 and made[0].frames >= 30 and made[0].frames - made[0].no_face >= 30
    assert peers[0]["mode"] == "drive"
