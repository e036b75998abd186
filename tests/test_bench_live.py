"""streamer/bench/live.py, the WebRTC benchmark harness (behaviour, not speed): its clients in the
server's process and in a second process both receive the reenacted stream, and the server-side
statistics cover the clients' measured window."""
import asyncio
import os

import pytest

from streamer.bench import live as bench_live
from streamer.testing.rtc_client import clip_frames
from streamer.web.webrtc import allow_loopback_candidates


@pytest.fixture(scope="module")
def frames():
    allow_loopback_candidates(only=True)
    return clip_frames(str(bench_live.ASSET_CLIP), count=12, size=(640, 360))  # the barcode needs this size


@pytest.mark.parametrize("client_process, peers, watch, camera",
                         [(True, 2, False, "live"), (True, 2, False, "once"), (False, 1, True, "live")])
def test_clients_receive_frames(frames, client_process, peers, watch, camera):
    make = bench_live.load_factory(None)
    r = asyncio.run(bench_live._run(make, peers=peers, watch=watch, seconds=2.0, warmup=1.0, fps=30,
                                    frames=frames, client_process=client_process, camera=camera))
    assert r["clients"] == ("own process" if client_process else "server's process")
    assert r["camera"] == (None if watch else {"live": "encoded as sent", "once": "encoded once, looped"}[camera])
    assert len(r["per_peer"]) == peers and all(p["fps"] > 5 for p in r["per_peer"])
    # the server's own statistics: one source per peer (send+receive) or the shared pipeline (watch)
    assert len(r["server_process_ms"]) == (1 if watch else peers)
    assert r["capture_to_publish_ms_p50"] is not None and r["capture_to_publish_ms_p50"] > 0
    c = r["cpu"]   # CPU over the window: this process's threads, and the clients' own process if apart
    cores = os.cpu_count() + 0.5
    assert 0 < c["server_cores"] <= cores and c["server_ms_per_frame"] > 0
    assert (0 < c["client_cores"] <= cores) if client_process else c["client_cores"] is None
    if not watch:  # the fake keeps the client's barcode: the round trip was measured
        assert all(p["roundtrip_ms_p50"] is not None for p in r["per_peer"])


def test_peers_take_the_avatars_in_turn(frames, tmp_path):
    """Each peer its own avatar: a list of avatars is handed out in turn, from the first in every run,
    and the run's window opens once every peer receives frames."""
    from PIL import Image
    paths = [tmp_path / f"{n}.png" for n in "abc"]
    for i, path in enumerate(paths):
        Image.new("RGB", (64, 64), (60 * i, 90, 120)).save(path)
    make = bench_live.PeerAvatars(bench_live.load_factory(None), [str(p) for p in paths])
    r = asyncio.run(bench_live._run(make, peers=2, watch=False, seconds=1.0, warmup=0.2, fps=30,
                                    frames=frames, avatar=str(paths[0]), client_process=False))
    assert r["avatars"] == ["a.png", "b.png"] and all(p["fps"] > 5 for p in r["per_peer"])
    made = []
    turns = bench_live.PeerAvatars(lambda avatar, **kw: made.append(avatar), ["x", "y"])
    for _ in range(3):
        turns()
    turns("x")           # the server's default avatar counts as "none named"
    turns("elsewhere")   # a peer that names its own keeps it
    assert made == ["x", "y", "x", "y", "elsewhere"] and turns.given == ["x", "y", "x", "y"]


def test_client_process_failure_is_reported(monkeypatch):
    """A child that dies before its result -> an error naming its exit status, not a hang."""
    async def go():
        return await bench_live._clients_elsewhere("http://127.0.0.1:9/", 1, True, 0.5, 0.1, 30, (64, 64),
                                                   lambda what: None, "live")
    with pytest.raises(RuntimeError, match="client process failed"):
        asyncio.run(go())


def test_cli_passes_client_process(capsys):
    assert bench_live.main(["--peers", "1", "--seconds", "1", "--warmup", "0.5", "--client-process", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count('"clients": "own process"') == 3 and "server's process" not in out


def test_cli_bad_avatar_is_one_line(capsys):
    """Every avatar is prepared before the first run: a missing one stops the benchmark in one line."""
    with pytest.raises(SystemExit) as e:
        bench_live.main(["--factory", "streamer.reenact.engine:default_zoo_factory", "--avatar", "nosuch.png",
                         str(bench_live.ASSET_CLIP.parent / "astronaut.png"), "--peers", "2", "--seconds", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip() == "error: avatar not found: nosuch.png"
