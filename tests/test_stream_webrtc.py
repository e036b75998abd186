"""WebRTC through aiortc peers on 127.0.0.1: reenacted frames come back, watchers get the server
stream, several peers each with their own avatar, controls, and the HTTP security rules."""
import asyncio
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engines.core.errors import UserError
from streamer.stream.pipeline import Pipeline
from streamer.stream.sources import Capture, open_source, parse_source
from streamer.testing.fakes import FakeReenactor, avatar_color, expected_output, make_fake_reenactor
from streamer.testing.rtc_client import (ClientPeer, EncodedCameraTrack, StampedCameraTrack, clip_frames, read_stamp,
                                         stamp, vp8_loop)
from tests.stream_support import loopback_ice, png_bytes, psnr, served  # noqa: F401 (fixture)

CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"


@pytest.fixture(scope="module")
def clip():
    return clip_frames(str(CLIP), count=24)


def near(rgb, color, tol=40):
    return bool(np.all(np.abs(np.asarray(rgb, float) - color) <= tol))


@pytest.mark.parametrize("camera", ["encoded live", "encoded once"])
def test_peer_sends_camera_and_gets_reenacted_frames(loopback_ice, clip, camera):
    """Also with the benchmark's camera encoded once (EncodedCameraTrack): the server decodes the
    same stamped frames, and the stamps, repeating every 60 frames there, still time the round trip."""
    made = []
    track = (StampedCameraTrack(clip) if camera == "encoded live" else
             EncodedCameraTrack(vp8_loop(clip, length=60, keyframe_every=20)))

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    async def main():
        async with served(factory) as srv, aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http, send=track, keep_frames=40)
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
    assert checked >= 10 and len(peer.latencies_ms) >= 10
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
    from streamer.web.webapp import MAX_UPLOAD_BYTES

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
            stored = {srv.avatars.path(json.loads(res[k][1])["avatar"]) for k in ("png", "jpeg")}
            return res, {p.suffix: p.read_bytes() for p in stored}, sorted(srv.avatars.dir.iterdir())

    res, stored, listed = asyncio.run(main())
    assert res["png"][0] == 200 and res["jpeg"][0] == 200 and len(listed) == 2
    # a valid photo is kept as sent (compact, EXIF orientation kept for read_photo), named by its format
    assert stored == {".png": png_bytes(1), ".jpg": png_bytes(2, fmt="JPEG")}
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

    from streamer.web.webrtc import rtc_configuration

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


# ------------------------------------------------------------------ hostile and faulty HTTP clients
async def _raw(port: int, data: bytes, *, close_after_send: bool = False, read: bool = True) -> bytes:
    """Send raw bytes to the server and read what it answers (until it closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close_after_send:
        writer.close()
        return b""
    out = await asyncio.wait_for(reader.read(), 20) if read else b""
    writer.close()
    return out


def _server_errors(caplog) -> list[str]:
    """Records aiohttp logs for a failing handler (a 500 with a traceback in the log)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= 40 or r.exc_info]


def test_malformed_json_bodies_get_a_short_400(caplog):
    """Any malformed body on any JSON endpoint: a 4xx with a short JSON error, never a 500."""
    deep = "[" * 200_000 + "]" * 200_000
    bodies = {
        "nested 200,000 deep": deep,
        "nested 50 deep (under the size limit, over the depth limit)": '{"action": ' + "[" * 50 + "]" * 50 + "}",
        "5000-digit integer": '{"action": "side_by_side", "value": ' + "9" * 5000 + "}",
        "NaN": '{"action": "side_by_side", "value": NaN}',
        "Infinity": '{"action": "side_by_side", "value": -Infinity}',
        "1e999": '{"action": "side_by_side", "value": 1e999}',
        "not UTF-8": b'{"action": "\xff\xfe"}',
        "lone surrogate": '{"action": "reset", "peer": "\\ud800"}',
        "an array": '["reset"]',
        "a string": '"reset"',
        "truncated": '{"action": "re',
        "empty": "",
    }

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            out = {}
            for path in ("/control", "/offer", "/close"):
                for what, body in bodies.items():
                    out[path, what] = await _req(http, "POST", srv.url + path, data=body,
                                                 headers={"Content-Type": "application/json"})
            out["ok"] = await _req(http, "GET", srv.url + "/status")
            return out

    res = asyncio.run(main())
    for key, (status, text) in res.items():
        if key == "ok":
            continue
        assert 400 <= status < 500, (key, status, text[:200])
        assert len(text) < 300 and "error" in json.loads(text), (key, text[:300])
    assert res["ok"][0] == 200                 # still serving
    assert not _server_errors(caplog), _server_errors(caplog)[:3]


def test_control_values_must_be_of_the_right_type():
    """'value' must be a JSON boolean: the string "false" must not turn side-by-side on; wrong types of
    every field get a 400, and the pipeline's state is untouched by them."""
    from streamer.stream.controls import Controller

    async def main():
        pipe = Pipeline(FakeReenactor())
        controller = Controller(pipe, make_fake_reenactor)
        async with served(make_fake_reenactor, controller=controller) as srv, aiohttp.ClientSession() as http:
            post = lambda body: _req(http, "POST", srv.url + "/control", json=body)  # noqa: E731
            bad = [{"action": "side_by_side", "value": v} for v in ("false", "true", 0, 1, [], {}, 0.5)]
            bad += [{"action": 5}, {"action": None}, {"action": ["reset"]}, {"action": "reset", "peer": 7},
                    {"action": "avatar", "avatar": 12}, {"action": "avatar", "avatar": ["x"]}]
            wrong = [await post(b) for b in bad]
            state_after_bad = pipe.reenactor.side_by_side
            on = await post({"action": "side_by_side", "value": True})
            off = await post({"action": "side_by_side", "value": False})
            pipe.close()
            return wrong, state_after_bad, on, off

    wrong, state_after_bad, on, off = asyncio.run(main())
    assert all(s == 400 and "error" in json.loads(t) for s, t in wrong), wrong
    assert state_after_bad is False
    assert json.loads(on[1])["message"] == "side-by-side on" and json.loads(off[1])["message"] == "side-by-side off"


def test_unknown_action_is_echoed_short():
    async def main():
        pipe = Pipeline(FakeReenactor())
        from streamer.stream.controls import Controller
        async with served(make_fake_reenactor, controller=Controller(pipe, make_fake_reenactor)) as srv, \
                aiohttp.ClientSession() as http:
            big = await _req(http, "POST", srv.url + "/control", json={"action": "x" * (5 * 1024 * 1024)})
            mid = await _req(http, "POST", srv.url + "/control", json={"action": "y" * 100_000})
            pipe.close()
            return big, mid

    big, mid = asyncio.run(main())
    assert big[0] in (400, 413) and len(big[1]) < 300
    assert mid[0] == 400 and len(mid[1]) < 300 and "unknown control 'yyyy" in mid[1]


def test_non_utf8_token_header_gets_403(caplog):
    async def main():
        async with served(make_fake_reenactor, token="s3cret-token") as srv:
            raw = (b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Token: \xff\xfe\xc3(\r\n"
                   b"Connection: close\r\n\r\n")
            answer = await _raw(srv.port, raw)
            async with aiohttp.ClientSession() as http:
                ok = await _req(http, "GET", srv.url + "/status", headers={"X-Token": "s3cret-token"})
            return answer, ok

    answer, ok = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert ok[0] == 200 and not _server_errors(caplog)


def test_client_disconnecting_mid_body_is_not_a_server_error(caplog):
    async def main():
        async with served(make_fake_reenactor) as srv:
            for path, ctype in (("/control", "application/json"), ("/avatar", "image/png")):
                head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: 100000\r\n\r\n").encode()
                await _raw(srv.port, head + b'{"action": "res', close_after_send=True)
            await asyncio.sleep(0.5)                # the server notices the closed connections
            async with aiohttp.ClientSession() as http:
                return await _req(http, "GET", srv.url + "/status")

    assert asyncio.run(main())[0] == 200
    assert not _server_errors(caplog), _server_errors(caplog)[:3]


def test_body_read_timeout_and_connection_cap(monkeypatch):
    """A body that never finishes gets 408 after the body timeout; past the connection cap a new
    connection gets 503 and is closed; once one is freed, requests are served again."""
    import streamer.web.webapp as webapp
    monkeypatch.setattr(webapp, "BODY_TIMEOUT_S", 0.5)

    async def main():
        async with served(make_fake_reenactor, max_connections=3) as srv:
            head = (f"POST /control HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 1000\r\n\r\n").encode()
            slow = await _raw(srv.port, head + b'{"act')          # waits for the server's answer
            idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(3)]
            await asyncio.sleep(0.2)
            over = await _raw(srv.port, f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
            for _, w in idle:
                w.close()
            async with aiohttp.ClientSession() as http:
                for _ in range(50):                # once the server has seen them close
                    try:
                        after = await _req(http, "GET", srv.url + "/status")
                    except aiohttp.ClientError:
                        after = (None, "")
                    if after[0] == 200:
                        break
                    await asyncio.sleep(0.1)
            return slow, over, after

    slow, over, after = asyncio.run(main())
    assert slow.startswith(b"HTTP/1.1 408") and b"error" in slow, slow[:200]
    assert over.startswith(b"HTTP/1.1 503") and b"too many connections" in over, over[:200]
    assert after[0] == 200


def test_mpo_jpeg_upload_is_accepted():
    """MPO (several JPEGs in one file, as many phone cameras write) is a JPEG to every decoder; the
    CLI reads it, so the upload endpoint takes it too."""
    import io

    from PIL import Image
    rng = np.random.default_rng(5)
    a, b = (Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for _ in range(2))
    buf = io.BytesIO()
    a.save(buf, "MPO", save_all=True, append_images=[b])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            status, text = await _req(http, "POST", srv.url + "/avatar", data=buf.getvalue(),
                                      headers={"Content-Type": "image/jpeg"})
            return status, text, (srv.avatars.path(json.loads(text)["avatar"]).read_bytes() if status == 200 else None)

    status, text, stored = asyncio.run(main())
    assert status == 200, text
    assert stored == buf.getvalue()


def test_uploads_are_decoded_off_the_event_loop():
    """While one upload decodes (held here until /status has answered), the server answers other
    requests: the decode runs on a worker thread, not on the event loop."""
    import threading

    from streamer.web.webapp import AvatarStore
    original = AvatarStore.add
    release, inside = threading.Event(), threading.Event()
    seen = {}

    def slow_add(self, body, ctype):
        seen["thread"] = threading.current_thread().name
        inside.set()
        release.wait(10)                 # bounded, so a blocked event loop cannot hang the test
        seen["released_before_return"] = release.is_set()
        return original(self, body, ctype)

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            srv.avatars.add = slow_add.__get__(srv.avatars)
            up = asyncio.ensure_future(_req(http, "POST", srv.url + "/avatar", data=png_bytes(1),
                                            headers={"Content-Type": "image/png"}))
            while not inside.is_set() and not up.done():
                await asyncio.sleep(0.01)
            status = await _req(http, "GET", srv.url + "/status")
            answered_while_decoding = not release.is_set()
            release.set()
            return status, answered_while_decoding, await up

    status, answered_while_decoding, up = asyncio.run(main())
    assert status[0] == 200 and up[0] == 200
    assert answered_while_decoding and seen["released_before_return"]
    assert seen["thread"] != threading.main_thread().name


def test_uploads_beyond_the_cap_get_503():
    import threading

    from streamer.web.webapp import MAX_UPLOADS, AvatarStore
    original = AvatarStore.add
    release = threading.Event()
    entered = []

    def slow_add(self, body, ctype):
        entered.append(1)
        release.wait(20)
        return original(self, body, ctype)

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            srv.avatars.add = slow_add.__get__(srv.avatars)
            post = lambda seed: _req(http, "POST", srv.url + "/avatar", data=png_bytes(seed),  # noqa: E731
                                     headers={"Content-Type": "image/png"})
            first = [asyncio.ensure_future(post(k)) for k in range(MAX_UPLOADS)]
            for _ in range(2000):                 # all of them received and waiting for a decoder
                if srv.avatars.pending == MAX_UPLOADS:
                    break
                await asyncio.sleep(0.01)
            extra = await post(99)
            release.set()
            return extra, await asyncio.gather(*first)

    extra, first = asyncio.run(main())
    assert extra[0] == 503 and "try again" in json.loads(extra[1])["error"]
    assert [s for s, _ in first] == [200] * MAX_UPLOADS


def test_connect_deadline_starts_when_the_avatar_is_ready(loopback_ice, clip):
    """Enrolling an uploaded photo takes about a minute on a small CPU; the connect deadline (shortened
    here to 3 s) must count from the answer, not from the offer, or such a peer never connects."""
    import time as _time

    def slow_factory(avatar):
        _time.sleep(6)                             # an enrollment, two deadlines long
        return FakeReenactor(avatar)

    async def main():
        async with served(slow_factory) as srv, aiohttp.ClientSession() as http:
            srv.peers.connect_timeout_s = 3
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(clip))
            await peer.connect()
            await peer.wait_frames(5)
            n = len(srv.peers.sessions)
            await peer.close()
            return n

    assert asyncio.run(main()) == 1


def test_engine_built_for_a_session_that_closed_meanwhile_is_closed(clip):
    import threading

    from aiortc import RTCPeerConnection

    from streamer.web.webrtc import rtc_configuration
    release = threading.Event()
    built = []

    class Closable(FakeReenactor):
        closed = False

        def close(self):
            self.closed = True

    def factory(avatar):
        release.wait(10)
        built.append(Closable(avatar))
        return built[-1]

    async def main():
        async with served(factory) as srv, aiohttp.ClientSession() as http:
            pc = RTCPeerConnection(rtc_configuration())
            pc.addTrack(StampedCameraTrack(clip))
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer"}
            offer = asyncio.ensure_future(_req(http, "POST", srv.url + "/offer", json=body))
            while not srv.peers.sessions:
                await asyncio.sleep(0.01)
            sid = next(iter(srv.peers.sessions))
            closed = await _req(http, "POST", srv.url + "/close", json={"peer": sid})   # the user hangs up
            release.set()
            answer = await offer
            await pc.close()
            for _ in range(100):                   # the engine is closed off the event loop
                if built and built[0].closed:
                    break
                await asyncio.sleep(0.02)
            return closed, answer, len(srv.peers.sessions)

    closed, answer, left = asyncio.run(main())
    assert json.loads(closed[1]) == {"closed": True}
    assert answer[0] == 503 and "closed" in json.loads(answer[1])["error"]
    assert len(built) == 1 and built[0].closed and left == 0


def test_empty_token_on_loopback_means_no_token():
    async def main(host, token):
        async with served(make_fake_reenactor, host=host, token=token) as srv, aiohttp.ClientSession() as http:
            return (await _req(http, "GET", srv.url + "/status"))[0]

    assert asyncio.run(main("127.0.0.1", "")) == 200
    with pytest.raises(UserError, match="add --token"):
        asyncio.run(main("0.0.0.0", ""))


def test_server_releases_freed_memory_after_sessions_close(loopback_ice, clip, monkeypatch):
    import streamer.web.webrtc as webrtc
    trims = []
    monkeypatch.setattr(webrtc, "release_free_memory", lambda: trims.append(1))

    async def main():
        async with served(make_fake_reenactor) as srv, aiohttp.ClientSession() as http:
            srv.peers.trim_after_s = 0.2
            peers = [ClientPeer(srv.url, http, send=StampedCameraTrack(clip)) for _ in range(2)]
            for p in peers:
                await p.connect()
            for p in peers:
                await p.wait_frames(3)
            await asyncio.gather(*(p.close() for p in peers))
            for _ in range(200):
                if trims:
                    break
                await asyncio.sleep(0.05)
            return len(trims), len(srv.peers.sessions)

    trimmed, left = asyncio.run(main())
    assert left == 0 and trimmed >= 1
