"""The CLI wiring (streamer.live): flags, live and offline runs, one-line errors, HTTP and terminal
controls, the status line."""
import argparse
import asyncio
import json
import os
import socket
import threading
import time
import urllib.request

import av
import numpy as np
import pytest

from streamer.live import LiveConfig, add_live_arguments, is_offline, run_live
from streamer.stream.controls import Controller, TerminalKeys
from streamer.stream.pipeline import Pipeline
from streamer.testing.fakes import FakeReenactor, make_fake_reenactor
from tests.media import short_clip


def args_of(*argv):
    p = argparse.ArgumentParser()
    p.add_argument("--avatar")
    p.add_argument("--side-by-side", action="store_true", default=None)
    add_live_arguments(p)
    return LiveConfig.from_args(p.parse_args(list(argv)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_defaults_and_mode_choice():
    a = args_of()
    assert (a.stream.source, a.stream.sinks, a.serve.host, a.serve.port, a.stream.fps, a.serve.webrtc) == \
        (None, None, "127.0.0.1", 8080, 30.0, False)
    assert is_offline(args_of("--source", "clip.mp4", "--sink", "out.mp4"))
    assert not is_offline(args_of("--source", "clip.mp4", "--sink", "vcam"))
    assert not is_offline(args_of("--source", "clip.mp4", "--sink", "out.mp4", "--realtime"))
    assert not is_offline(args_of("--source", "lavfi:testsrc2", "--sink", "out.mp4"))
    assert not is_offline(args_of("--source", "clip.mp4", "--sink", "out.mp4", "--webrtc"))


@pytest.mark.parametrize("argv, message", [
    ((), "error: no camera at /dev/video0"),                              # the default: webcam 0
    (("--source", "3"), "error: no camera at /dev/video3"),
    (("--source", "nope.mp4"), "error: --source nope.mp4: no such file"),
    (("--webrtc", "--host", "0.0.0.0"), "error: binding to 0.0.0.0 exposes the stream"),
    (("--source", "lavfi:testsrc2", "--sink", "out.txt"), "error: --sink out.txt: expected a .mp4"),
    (("--size", "huge",), "error: --size must look like 640x480"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    import streamer.stream.sources as sources

    monkeypatch.setattr(sources.os.path, "exists", lambda p: False)    # as on a machine with no camera
    built = []
    assert run_live(args_of(*argv), lambda a: built.append(a)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not built                                                   # failed before loading a model


def test_offline_through_run_live(tmp_path, capsys):
    src = short_clip(tmp_path / "in.mp4", 30, size=(320, 180))
    out = tmp_path / "out.mp4"
    assert run_live(args_of("--source", str(src), "--sink", str(out), "--side-by-side"), make_fake_reenactor) == 0
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
        rate = c.streams.video[0].average_rate
    assert len(frames) == 30 and rate == 24 and (frames[0].width, frames[0].height) == (640, 180)
    assert "30 frames (0 without a face)" in capsys.readouterr().err


def test_live_lavfi_to_file_with_http_controls(tmp_path, capsys):
    port = free_port()
    out = tmp_path / "live.mp4"
    made = []

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", run_live(args_of(
        "--source", "lavfi:testsrc2", "--size", "320x240", "--sink", str(out), "--control",
        "--port", str(port), "--duration", "3"), factory)))
    t.start()
    base = f"http://127.0.0.1:{port}"

    def call(path, body=None):
        req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    for _ in range(100):
        try:
            status = call("/status")
            if status.get("server", {}).get("processed", 0) > 5:
                break
        except OSError:
            pass
        time.sleep(0.05)
    reset = call("/control", {"action": "reset"})
    sbs = call("/control", {"action": "side_by_side"})
    t.join(30)
    assert result["rc"] == 0
    assert reset["ok"] and sbs["message"] == "side-by-side on"
    assert made[0].resets == 1 and made[0].side_by_side
    assert status["source"]["ok"] and status["server"]["latency_ms_p50"] is not None
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    times = [f.time for f in frames]
    assert len(frames) > 20 and all(b > a for a, b in zip(times, times[1:])) and times[-1] < 4
    assert (frames[0].width, frames[0].height) == (320, 240)       # side-by-side frames letterboxed in
    err = capsys.readouterr()
    assert f"controls at http://127.0.0.1:{port}/" in err.out
    assert "fps | latency p50/p95" in err.err and "dropped" in err.err and "no-face" in err.err


def test_webrtc_mode_serves_page_and_prints_url(capsys):
    port = free_port()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", run_live(
        args_of("--webrtc", "--port", str(port), "--duration", "2"), make_fake_reenactor)))
    t.start()
    html = js = None
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                html = r.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/app.js", timeout=5) as r:
                js = r.read().decode()
            break
        except OSError:
            time.sleep(0.05)
    t.join(30)
    assert result["rc"] == 0
    assert '<script src="app.js">' in html and "http" not in html.split("<script")[1]  # no external CDN
    assert "'/offer'" in js
    assert f"open http://127.0.0.1:{port}/" in capsys.readouterr().out


def test_terminal_keys_through_a_pty():
    import pty

    async def main():
        master, slave = pty.openpty()
        stream = os.fdopen(slave, "r", buffering=1)
        r = FakeReenactor()
        pipe = Pipeline(r)
        quit_ = asyncio.Event()
        said = []
        keys = TerminalKeys(Controller(pipe, make_fake_reenactor), quit_.set, said.append, stream=stream)
        assert keys.start(asyncio.get_running_loop())
        os.write(master, b"rs")
        for _ in range(100):
            if r.resets and r.side_by_side:
                break
            await asyncio.sleep(0.02)
        os.write(master, b"q")
        await asyncio.wait_for(quit_.wait(), 5)
        keys.stop()
        pipe.close()
        stream.close()
        os.close(master)
        return r, said

    r, said = asyncio.run(main())
    assert r.resets == 1 and r.side_by_side
    assert said[0].startswith("keys: r reset") and "side-by-side on" in said


def test_next_avatar_cycles_through_folder(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.jpg", "notes.txt"):
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / name)

    async def main():
        from streamer.stream.controls import list_avatars
        pipe = Pipeline(FakeReenactor())
        c = Controller(pipe, FakeReenactor, avatars=list_avatars(tmp_path))
        msgs = [await c.next_avatar() for _ in range(4)]
        pipe.close()
        return msgs

    assert asyncio.run(main()) == ["avatar: a.png", "avatar: b.jpg", "avatar: default", "avatar: a.png"]
