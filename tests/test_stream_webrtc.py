"""WebRTC through aiortc peers on 127.0.0.1: reenacted frames come back, watchers get the server
stream, several peers each with their own avatar, controls, and the HTTP security rules."""
import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engines.errors import UserError
from streamer.fakes import FakeReenactor, avatar_color, expected_output, make_fake_reenactor
from streamer.pipeline import Pipeline
from streamer.rtc_client import ClientPeer, StampedCameraTrack, clip_frames, read_stamp, stamp
from streamer.sources import Capture, open_source, parse_source
from tests.stream_support import loopback_ice, png_bytes, psnr, served  # noqa: F401 (fixture)

CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"


@pytest.fixture(scope="module")
def clip():
    return clip_frames(str(CLIP), count=24)


def near(rgb, color, tol=40):
    return bool(np.all(np.abs(np.asarray(rgb, float) - color) <= tol))


def test_peer_sends_camera_and_gets_reenacted_frames(loopback_ice, clip):
    made = []

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    async def main():
        async with served(factory) as srv, aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(clip), keep_frames=40)
            answer = await peer.connect()
            assert answer["type"] == "answer" and "m=video" in answer["sdp"]
            await peer.wait_frames(40)
            async with http.get(f"{srv.url}/status") as r:
                status = await r.json()
            await peer.close()
            return peer, status

    peer, status = asyncio.run(main())
    assert len(made) == 1                      # this peer got its own reenactor from the factory
    checked = 0
    for img in peer.frames[10:]:               # skip the first frames (VP8 ramps its bitrate up)
        n = read_stamp(img)
        if n is None:
            continue
        sent = clip[n % len(clip)].copy()
        stamp(sent, n)
        # the barcode names the frame sent; what came back is the fake engine's closed form of it.
        # Measured here: 33.7-35 dB after VP8 both ways; the un-inverted frame scores ~4 dB
        assert psnr(img, expected_output(sent, (255, 0, 255))) > 28
        checked += 1
    assert checked >= 10
    assert status["peers"][0]["mode"] == "drive" and status["peers"][0]["processed"] >= 40
    assert status["peers"][0]["latency_ms_p50"] is not None


def test_receive_only_offer_watches_server_stream(loopback_ice):
    async def main():
        loop = asyncio.get_running_loop()
        spec = parse_source("lavfi:testsrc2", size=(320, 240), fps=30)
        pipe = Pipeline(FakeReenactor())
        cap = Capture(lambda: open_source(spec), label="lavfi")
        run = asyncio.ensure_future(pipe.run())
        cap.start(loop, pipe.input)
        try:
            async with served(make_fake_reenactor, server_pipeline=pipe) as srv, \
                    aiohttp.ClientSession() as http:
                watchers = [ClientPeer(srv.url, http, keep_frames=15) for _ in range(2)]
                for w in watchers:
                    await w.connect()
                for w in watchers:
                    await w.wait_frames(15)
                subs = pipe.subscriber_count
                for w in watchers:
                    await w.close()
                await asyncio.sleep(0.1)
                return watchers, subs, pipe.subscriber_count
        finally:
            await asyncio.to_thread(cap.stop)
            pipe.close()
            await run

    watchers, subs, subs_after = asyncio.run(main())
    assert subs == 2 and subs_after == 0       # each watcher subscribed to the one server pipeline
    for w in watchers:
        img = w.frames[-1]
        assert img.shape == (240, 320, 3) and near(img[4:28, -28:-4].reshape(-1, 3).mean(0), (255, 0, 255))


def test_receive_only_offer_without_server_source_is_refused(loopback_ice):
    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http)
            with pytest.raises(RuntimeError, match=r"offer refused \(400\): this server has no video source"):
                await peer.connect()
            await peer.close(tell_server=False)
            return len(srv.peers.sessions)

    assert asyncio.run(main()) == 0


def test_peers_each_have_their_own_avatar_and_controls(loopback_ice, clip):
    made = {}

    def factory(avatar):
        r = FakeReenactor(avatar)
        made.setdefault(str(avatar), []).append(r)
        return r

    async def main():
        async with served(factory) as srv, aiohttp.ClientSession() as http:
            ids, colors = [], []
            for seed in range(12):                 # two uploads whose fake-engine colours differ
                async with http.post(f"{srv.url}/avatar", data=png_bytes(seed),
                                     headers={"Content-Type": "image/png"}) as r:
                    assert r.status == 200, await r.text()
                    aid = (await r.json())["avatar"]
                c = avatar_color(srv.avatars.path(aid))
                if c not in colors:
                    ids.append(aid)
                    colors.append(c)
                if len(ids) == 3:
                    break
            a = ClientPeer(srv.url, http, send=StampedCameraTrack(clip), avatar=ids[0], keep_frames=10 ** 6)
            b = ClientPeer(srv.url, http, send=StampedCameraTrack(clip), avatar=ids[1], keep_frames=10 ** 6)
            await a.connect()
            await b.connect()
            await a.wait_frames(15)
            await b.wait_frames(15)
            first = (a.frames[-1], b.frames[-1])
            # controls on peer a only: new avatar, side-by-side, reset
            assert (await a.control("avatar", avatar=ids[2]))["ok"]
            assert (await a.control("side_by_side"))["message"] == "side-by-side on"
            assert (await a.control("reset"))["ok"]
            n = len(a.received)
            await a.wait_frames(n + 15)
            after = a.frames[-1]
            sess = {s.id: s for s in srv.peers.sessions.values()}
            reenactors = {pid: s.pipeline.reenactor for pid, s in sess.items()}
            out = (first, after, colors, reenactors[a.peer_id], reenactors[b.peer_id])
            await a.close()
            await b.close()
            return out

    (fa, fb), after, colors, ra, rb = asyncio.run(main())
    corner = lambda img: img[4:28, -28:-4].reshape(-1, 3).mean(0)  # noqa: E731
    assert near(corner(fa), colors[0]) and near(corner(fb), colors[1])
    assert after.shape[1] == 2 * fa.shape[1] and near(corner(after), colors[2])   # side by side, new avatar
    assert ra.resets == 1 and ra.side_by_side and rb.resets == 0 and not rb.side_by_side
    assert ra.avatar is not None and Path(ra.avatar).name.startswith(ra.avatar.stem)


async def _req(http, method, url, **kw):
    async with http.request(method, url, **kw) as r:
        return r.status, await r.text()


def test_token_is_checked_on_every_endpoint():
    async def main():
        jar = aiohttp.CookieJar(unsafe=True)    # keep cookies for an IP host, as browsers do
        async with served(make_fake_reenactor, token="s3cret-token") as srv, \
                aiohttp.ClientSession(cookie_jar=jar) as http:
            u = srv.url
            calls = [("GET", "/"), ("GET", "/app.js"), ("GET", "/status"), ("POST", "/offer"),
                     ("POST", "/close"), ("POST", "/control"), ("POST", "/avatar")]
            without = [await _req(http, m, u + p, json={}) for m, p in calls]
            wrong = [await _req(http, m, u + p, json={}, headers={"X-Token": "nope"}) for m, p in calls]
            good = {"X-Token": "s3cret-token"}
            ok_status = await _req(http, "GET", u + "/status", headers=good)
            ok_query = await _req(http, "GET", u + "/status?token=s3cret-token")
            ok_bearer = await _req(http, "GET", u + "/status", headers={"Authorization": "Bearer s3cret-token"})
            async with http.get(u + "/?token=s3cret-token") as r:      # the page sets a SameSite cookie
                page = r.status, r.cookies.get("reenact_token")
            cookie_js = await _req(http, "GET", u + "/app.js")          # ...which its script load carries
            return without, wrong, ok_status, ok_query, ok_bearer, page, cookie_js

    without, wrong, ok_status, ok_query, ok_bearer, page, cookie_js = asyncio.run(main())
    assert all(s == 403 and "token" in t for s, t in without + wrong)
    assert ok_status[0] == ok_query[0] == ok_bearer[0] == 200
    assert page[0] == 200 and page[1] is not None and page[1]["samesite"] == "Strict"
    assert cookie_js[0] == 200


def test_binding_beyond_loopback_needs_a_token():
    async def main(host, token):
        async with served(make_fake_reenactor, host=host, token=token) as srv:
            return srv.port

    with pytest.raises(UserError, match="add --token"):
        asyncio.run(main("0.0.0.0", None))
    assert asyncio.run(main("0.0.0.0", "long-enough-token")) > 0


def test_loopback_server_refuses_foreign_host_origin_and_non_json():
    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            u = srv.url
            return [
                await _req(http, "GET", u + "/status", headers={"Host": "evil.example:8080"}),  # rebinding
                await _req(http, "POST", u + "/control", json={"action": "reset"},
                           headers={"Origin": "http://evil.example"}),
                await _req(http, "POST", u + "/control", data="action=reset",
                           headers={"Content-Type": "text/plain"}),                           # simple POST
                await _req(http, "POST", u + "/offer", json={"sdp": "v=0", "type": "offer"}),
                await _req(http, "GET", u + "/status"),
            ]

    host, origin, plain, bad_offer, ok = asyncio.run(main())
    assert host[0] == 403 and origin[0] == 403 and plain[0] == 415
    assert bad_offer[0] == 400 and "video m-line" in bad_offer[1]
    assert ok[0] == 200


def test_avatar_uploads_are_type_and_size_checked():
    from streamer.webapp import MAX_UPLOAD_BYTES

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            u = srv.url + "/avatar"
            post = lambda body, ctype: _req(http, "POST", u, data=body, headers={"Content-Type": ctype})  # noqa
            res = {
                "png": await post(png_bytes(1), "image/png"),
                "jpeg": await post(png_bytes(2, fmt="JPEG"), "image/jpeg"),
                "text": await post(b"hello", "text/plain"),
                "liar": await post(png_bytes(3, fmt="JPEG"), "image/png"),        # JPEG bytes called PNG
                "garbage": await post(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png"),
                "gif": await post(b"GIF89a" + b"\0" * 100, "image/gif"),
                "tiny": await post(png_bytes(4, size=(16, 16)), "image/png"),
                "huge": await post(b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD_BYTES + 10), "image/png"),
            }
            stored = sorted(p.name for p in srv.avatars.dir.iterdir())
            return res, stored

    res, stored = asyncio.run(main())
    assert res["png"][0] == 200 and res["jpeg"][0] == 200 and len(stored) == 2
    assert all(n.endswith(".png") for n in stored)               # re-encoded, never the uploaded bytes
    assert res["text"][0] == 415 and res["liar"][0] == 415 and res["garbage"][0] == 415
    assert res["gif"][0] == 415 and res["tiny"][0] == 400 and res["huge"][0] == 413


def test_peer_limit(loopback_ice, clip):
    async def main():
        async with served(make_fake_reenactor, max_peers=1) as srv, aiohttp.ClientSession() as http:
            a = ClientPeer(srv.url, http, send=StampedCameraTrack(clip))
            await a.connect()
            b = ClientPeer(srv.url, http, send=StampedCameraTrack(clip))
            with pytest.raises(RuntimeError, match=r"\(503\): too many peers"):
                await b.connect()
            await b.close(tell_server=False)
            await a.close()

    asyncio.run(main())


def test_peer_that_never_connects_is_dropped(clip):
    from aiortc import RTCPeerConnection

    from streamer.webrtc import rtc_configuration

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            srv.peers.connect_timeout_s = 0.5
            pc = RTCPeerConnection(rtc_configuration())
            pc.addTrack(StampedCameraTrack(clip))
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer"}
            async with http.post(f"{srv.url}/offer", json=body) as r:
                assert r.status == 200
            await pc.close()                     # the answer is never applied: no ICE, no DTLS
            held = len(srv.peers.sessions)
            for _ in range(100):
                if not srv.peers.sessions:
                    break
                await asyncio.sleep(0.05)
            return held, len(srv.peers.sessions)

    assert asyncio.run(main()) == (1, 0)
