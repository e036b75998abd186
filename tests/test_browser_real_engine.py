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


def test_first_click_with_an_unenrolled_photo_yields_avatar_frames(tmp_path):
    """The README's `--avatar me.png --webrtc` with a photo never enrolled: the server prepares it as
    it starts, the page shows the progress, and the user's first click on "Send my camera" (made while
    the photo is still enrolling) connects once the avatar is ready and gets the avatar back; no
    'RTCPeerConnection is closed'. The photo enrolls in a child process as the product's does, with the
    tests' quick step counts (tests/media.py)."""
    import shutil

    from streamer.avatar.preparing import enroll_in_subprocess
    from streamer.reenact.engine import AvatarReenactor

    engine = Engine("default", log=lambda m: None, progress=False)
    photo = tmp_path / "me.png"
    shutil.copy(ASTRONAUT, photo)              # a fresh file: no pack of it exists anywhere
    packs, reports = {}, []

    def prepare(path, report):
        # as run_stream's server enrolls a new photo: in a low-priority child process
        def seen(stage, done, total):
            reports.append(stage)
            report(stage, done, total)
        pack = enroll_in_subprocess(path, seen, enroll_kw={"invert_steps": 40, "tune_steps": 60})
        packs[Path(path)] = pack
        return pack

    def factory(avatar):
        return AvatarReenactor(engine, packs[Path(avatar)])    # KeyError if asked before it is prepared

    y4m = make_y4m(tmp_path / "camera.y4m")

    async def main():
        from streamer.web.webrtc import allow_loopback_candidates
        allow_loopback_candidates()
        async with served(factory, default_avatar=photo, prepare=prepare) as srv:
            async with Chromium(tmp_path, f"{srv.url}/", y4m) as browser:
                before = await browser.wait_for(
                    lambda s: s.get("polls", 0) >= 1 and (s.get("avatar") or {}).get("state") == "preparing")
                await browser.eval("document.getElementById('send').click()")
                s = await browser.wait_for(enough, timeout=600)
                peers = [p.snapshot() for p in srv.peers.sessions.values()]
                return before, s, peers

    before, s, peers = asyncio.run(main())
    assert before["avatar"]["name"] == "me.png" and before["avatar"]["progress"] < 1
    assert s["clickedWhile"] == "preparing"               # the click came before the avatar was ready
    assert s["avatarStates"] == ["default:preparing", "default:ready"]
    assert {"align", "invert", "tune", "check"} <= set(reports)
    assert enough(s), s
    assert s["state"] == "connected" and not s["error"], s
    assert not any("closed" in m or m.startswith("error") for m in s["messages"]), s["messages"]
    assert (s["width"], s["height"]) == (256, 256)          # the avatar, not the camera
    assert s["serverFps"] is not None and s["latencyMs"] is not None    # the page shows the session's numbers
    assert len(peers) == 1 and peers[0]["mode"] == "drive" and peers[0]["processed"] >= 30
