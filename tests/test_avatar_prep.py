"""Avatars are prepared ahead of any session (streamer.avatar.preparing): the --avatar photo as the server
starts, each upload as it arrives. /status reports the stage and progress and names uploads by their
file name; an offer waits for its avatar; a failed preparation is one 400 line; the console's status
line shows each peer's fps and latency."""
import asyncio
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from engines.core.errors import UserError
from streamer.testing.fakes import FakeReenactor
from streamer.live import LiveSession, peers_line
from streamer.avatar.preparing import Preparer, display_name
from streamer.testing.rtc_client import ClientPeer, StampedCameraTrack, clip_frames
from tests.stream_support import loopback_ice, png_bytes, served  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "assets" / "astronaut.png"
CLIP = ROOT / "assets" / "pexels_woman.mp4"


@pytest.fixture(scope="module")
def clip():
    return clip_frames(str(CLIP), count=12)


class GatedPrepare:
    """A prepare() that reports a few tuning steps, then waits for `release` (a slow enrollment)."""

    def __init__(self, fail: str | None = None):
        self.release = threading.Event()
        self.calls: list[Path] = []
        self.fail = fail

    def __call__(self, path, report):
        self.calls.append(Path(path))
        report("align")
        for i in range(3):
            report("tune", i, 10)
        if not self.release.wait(20):
            raise RuntimeError("test never released the preparation")
        if self.fail:
            raise UserError(self.fail)


async def _status(http, url) -> dict:
    async with http.get(f"{url}/status") as r:
        return await r.json()


async def _until(http, url, cond, tries=200):
    for _ in range(tries):
        s = await _status(http, url)
        if cond(s):
            return s
        await asyncio.sleep(0.05)
    return s


def _avatar(status, aid):
    return next((a for a in status["avatars"] if a["id"] == aid), None)


def test_default_avatar_is_prepared_at_start_and_the_offer_waits_for_it(loopback_ice, clip):
    prep = GatedPrepare()
    made = []

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    async def main():
        async with served(factory, default_avatar=ASTRONAUT, prepare=prep) as srv, \
                aiohttp.ClientSession() as http:
            during = await _until(http, srv.url, lambda s: (_avatar(s, "default") or {}).get("stage") == "tune")
            async with http.get(f"{srv.url}/avatars/default/thumbnail.jpg") as r:
                thumb = (r.status, r.content_type, await r.read())
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(clip))
            connecting = asyncio.ensure_future(peer.connect())
            await asyncio.sleep(0.5)
            waited = not connecting.done() and not made      # no engine before the avatar is ready
            prep.release.set()
            await connecting
            await peer.wait_frames(5)
            after = await _status(http, srv.url)
            await peer.close()
            return during, thumb, waited, after

    during, thumb, waited, after = asyncio.run(main())
    d = _avatar(during, "default")
    assert d["name"] == "astronaut.png" and d["state"] == "preparing"
    assert 0 < d["progress"] < 1 and "tuning" in d["message"] and "2/10" in d["message"]
    assert thumb[0] == 200 and thumb[1] == "image/jpeg" and thumb[2][:3] == b"\xff\xd8\xff"
    assert waited
    assert _avatar(after, "default")["state"] == "ready" and _avatar(after, "default")["progress"] == 1
    assert prep.calls == [ASTRONAUT] and len(made) == 1
    assert after["can_watch"] is False and after["peers"][0]["fps"] >= 0


def test_upload_is_prepared_at_once_and_named_by_its_file_name(loopback_ice):
    prep = GatedPrepare()

    async def main():
        async with served(FakeReenactor, prepare=prep) as srv, aiohttp.ClientSession() as http:
            async with http.post(f"{srv.url}/avatar", params={"name": "C:\\photos\\Me at the beach.png"},
                                 data=png_bytes(3), headers={"Content-Type": "image/png"}) as r:
                up = await r.json()
            aid = up["avatar"]
            during = await _until(http, srv.url, lambda s: (_avatar(s, aid) or {}).get("stage") == "tune")
            prep.release.set()
            after = await _until(http, srv.url, lambda s: _avatar(s, aid)["state"] == "ready")
            async with http.post(f"{srv.url}/avatar", data=png_bytes(4),
                                 headers={"Content-Type": "image/png"}) as r:
                unnamed = await r.json()
            return up, during, after, unnamed, srv.avatars.path(aid)

    up, during, after, unnamed, stored = asyncio.run(main())
    aid = up["avatar"]
    assert up["name"] == "Me at the beach.png"
    assert _avatar(during, aid)["name"] == "Me at the beach.png" and _avatar(during, aid)["state"] == "preparing"
    assert _avatar(after, aid)["state"] == "ready"
    assert prep.calls[0] == stored                       # the stored upload is what gets enrolled
    assert unnamed["name"] == "photo"


def test_failed_preparation_is_one_line_400_for_the_offer(loopback_ice, clip):
    prep = GatedPrepare(fail="no face found in astronaut.png; use a photo with one clearly visible face")
    prep.release.set()

    async def main():
        async with served(FakeReenactor, default_avatar=ASTRONAUT, prepare=prep) as srv, \
                aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(clip))
            with pytest.raises(RuntimeError) as e:
                await peer.connect()
            await peer.close()
            return str(e.value), await _status(http, srv.url), len(srv.peers.sessions)

    err, status, sessions = asyncio.run(main())
    assert "(400)" in err and "avatar astronaut.png: no face found" in err and "Traceback" not in err
    assert _avatar(status, "default")["state"] == "failed" and sessions == 0


def test_an_engine_bug_in_preparation_fails_the_avatar_not_the_server():
    def broken(path, report):
        raise ZeroDivisionError("boom")

    async def main():
        p = Preparer(broken)
        item = p.start("default", ASTRONAUT, "astronaut.png")
        await asyncio.wait_for(p.wait("default"), 10)
        p.shutdown()
        return item

    item = asyncio.run(main())
    assert item.state == "failed" and item.error == "ZeroDivisionError: boom"


def test_display_names_are_the_last_path_part_printable_and_short():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\selfie.JPG") == "selfie.JPG"
    assert display_name("a\x00b\nc\u202e.png") == "abc.png"
    long = display_name("x" * 300 + ".jpeg")
    assert len(long) <= 60 and long.endswith(".jpeg")
    assert display_name("") == display_name(None) == display_name(12) == "photo"


def test_status_line_shows_each_peers_fps_and_latency():
    stats = SimpleNamespace(fps=lambda: 24.26, snapshot=lambda: {"latency_ms_p50": 41.6})
    drive = SimpleNamespace(id="3f2a9c", mode="drive", pipeline=SimpleNamespace(stats=stats))
    fresh = SimpleNamespace(id="77aa00", mode="drive", pipeline=SimpleNamespace(
        stats=SimpleNamespace(fps=lambda: 0.0, snapshot=lambda: {"latency_ms_p50": None})))
    watch = SimpleNamespace(id="9c1e00", mode="watch", pipeline=None)
    assert peers_line([]) == "peers 0"
    assert peers_line([drive, fresh, watch]) == "peers 3: 3f2a 24.3 fps 42 ms, 77aa 0.0 fps - ms, 9c1e watching"

    sess = LiveSession()
    sess.peers = SimpleNamespace(sessions={"3f2a9c": drive})
    prep = SimpleNamespace(line=lambda: "avatar me.png: tuning the avatar 120/600 (31%)")
    sess.server = SimpleNamespace(preps=prep)
    assert sess.status_line() == "peers 1: 3f2a 24.3 fps 42 ms | avatar me.png: tuning the avatar 120/600 (31%)"


def test_preparer_line_names_only_avatars_not_ready():
    async def main():
        gate = GatedPrepare()
        p = Preparer(gate)
        p.start("default", ASTRONAUT, "astronaut.png")
        for _ in range(200):
            if p.get("default").stage == "tune":
                break
            await asyncio.sleep(0.02)
        busy = p.line()
        gate.release.set()
        await asyncio.wait_for(p.wait("default"), 10)
        done = p.line()
        p.shutdown()
        return busy, done

    busy, done = asyncio.run(main())
    assert busy.startswith("avatar astronaut.png: tuning the avatar 2/10 (") and busy.endswith("%)")
    assert done is None


def test_bad_upload_names_and_unknown_thumbnails_get_4xx(caplog):
    async def main():
        async with served(FakeReenactor) as srv, aiohttp.ClientSession() as http:
            async with http.post(f"{srv.url}/avatar?name=%FF%FE%00.png", data=png_bytes(5),
                                 headers={"Content-Type": "image/png"}) as r:
                odd = (r.status, await r.json())
            async with http.get(f"{srv.url}/avatars/nope/thumbnail.jpg") as r:
                missing = (r.status, await r.json())
            return odd, missing

    odd, missing = asyncio.run(main())
    assert odd[0] == 200 and "\x00" not in odd[1]["name"] and odd[1]["name"].endswith(".png")
    assert missing[0] == 404 and "thumbnail" in missing[1]["error"]
    assert "Traceback" not in caplog.text


def test_page_assets_are_served_and_local():
    async def main():
        async with served(FakeReenactor) as srv, aiohttp.ClientSession() as http:
            out = {}
            for path in ("/", "/app.js", "/style.css"):
                async with http.get(srv.url + path) as r:
                    out[path] = (r.status, r.content_type, await r.text())
            return out

    out = asyncio.run(main())
    assert all(s == 200 for s, _, _ in out.values())
    assert out["/style.css"][1] == "text/css"
    page, script, css = out["/"][2], out["/app.js"][2], out["/style.css"][2]
    # nothing loads from elsewhere at run time: no absolute URLs in the page, the stylesheet or fetches
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "url(" not in css and "@import" not in css
    assert not re.search(r"""fetch\(\s*["'`](https?:)?//""", script) and "import(" not in script
    for el in ('id="send"', 'id="watch"', 'id="camera"', 'id="mirror"', 'id="thumb"', 'id="avatar-progress"',
               'id="fps"', 'id="latency"', 'id="status"'):
        assert el in page


def test_progress_of_a_stage_without_steps_creeps_but_never_reaches_its_end(monkeypatch):
    import streamer.avatar.preparing as preparing
    from streamer.avatar.preparing import STAGES, Prep

    now = [100.0]
    monkeypatch.setattr(preparing.time, "monotonic", lambda: now[0])
    p = Prep("default", "me.png", None, state="preparing")
    p.report("invert", 150, 150)
    end_of_invert = p.progress
    p.report("targets")
    at = []
    for t in (0, 10, 40, 400, 4000):
        now[0] = 100.0 + t
        at.append(p.progress)
    _, lo, hi, _ = STAGES["targets"]
    assert end_of_invert == at[0] == lo
    assert all(a < b for a, b in zip(at, at[1:-1])) and lo < at[-1] < hi
    p.report("tune", 0, 600)
    assert p.progress == STAGES["tune"][1] > at[-1]


def test_enrollment_in_a_subprocess_reports_progress_and_fails_in_one_line(tmp_path):
    """A photo without a face, enrolled in the low-priority child process (as run_stream's WebRTC
    server enrolls photos): the child's progress arrives, and its error is one UserError line."""
    from streamer.avatar.preparing import enroll_in_subprocess

    photo = tmp_path / "noise.png"
    photo.write_bytes(png_bytes(7, size=(128, 128)))
    stages, logs = [], []
    with pytest.raises(UserError) as e:
        enroll_in_subprocess(photo, lambda stage, done, total: stages.append(stage), log=logs.append,
                             enroll_kw={"invert_steps": 1, "tune_steps": 1})
    assert str(e.value).startswith("no face found in noise.png") and "\n" not in str(e.value)
    assert stages[:2] == ["loading", "align"]
