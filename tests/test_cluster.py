"""The engine on Ray Serve (streamer.cluster): a local Ray cluster on this machine's CPUs, one per module.

* Equal output: 2 replicas (each an LRU of 2 avatars) serve 4 sessions with 4 avatars at once; every
  frame's p and image equal the in-process engine's (the one-engine test's tolerance: p within 1e-4,
  images >= 40 dB PSNR; in practice bit-exact). Then the deployment scales in to 1 replica and the
  same sessions go on: its LRU must evict and reload avatars, and the output stays equal.
* Faults: a replica killed (SIGKILL) mid-stream: no session crashes, each frame is a result or a
  ClusterUnavailable (which the live pipeline publishes as a status frame), each session resumes
  within 10 s, and every result still equals the in-process engine's.
* The token: a front-end without the cluster's token is refused. Serve's HTTP proxy is off.
* Nothing left behind: after shutdown no actor of the deployment or the pack store is alive, no
  object is left in the object store, and the front-end holds no stage thread.

Skipped when ray[serve] is not installed (pip install -e .[cluster]).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import av
import numpy as np
import pytest
import torch

from streamer.cluster.client import keep_ray_on_loopback  # noqa: E402  (imports no ray)

keep_ray_on_loopback()   # as the product's local cluster does, before this process first imports ray
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from engines.core.errors import UserError  # noqa: E402
from streamer.avatar.pack import AvatarPack  # noqa: E402
from streamer.cluster.client import (ClusterClient, ClusterUnavailable, RemoteGeneratorStage, deploy,  # noqa: E402
                                     start_local_ray, undeploy)
from streamer.cluster.config import APP, ClusterConfig  # noqa: E402
from streamer.reenact.config import ReenactConfig  # noqa: E402
from streamer.reenact.engine import Engine  # noqa: E402
from tests.media import quick_astronaut_pack, short_clip  # noqa: E402
from tests.same_output import psnr  # noqa: E402
from tests.stream_support import loopback_ice  # noqa: E402,F401 (fixture)

pytestmark = pytest.mark.slow   # the module's cluster and avatars take ~1 min to set up

P_TOL = 1e-4
MIN_PSNR = 40.0
CLIP_FRAMES = 24
FRAMES = 72          # the fault test's run: the clip three times over, media time going on
TOKEN = "test-cluster-token-0123456789"
RATE = 24.0


def quiet(m):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The in-process engine, 4 avatar packs (the bundled portrait's quick pack and 3 variants of its
    latent code: different faces, different hashes), the driving frames, and each avatar's output from
    the in-process engine on FRAMES frames (the clip repeated, media time going on)."""
    work = tmp_path_factory.mktemp("cluster")
    engine = Engine("default", log=quiet, progress=False)
    base = quick_astronaut_pack(engine.zoo, work)
    packs = [base]
    g = torch.Generator().manual_seed(18)
    for k in range(1, 4):
        pack = AvatarPack.load(base)
        pack.latent = pack.latent + 0.7 * torch.randn(pack.latent.shape, generator=g)
        path = work / f"variant{k}.avatar"
        pack.save(path)
        packs.append(path)
    clip = short_clip(work / "drive.mp4", CLIP_FRAMES)
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == CLIP_FRAMES
    reference = []
    for pack in packs:
        r = engine.make_reenactor(str(pack), **ReenactConfig().session())
        outs = [r.process(frames[k % CLIP_FRAMES], k / RATE) for k in range(FRAMES)]
        r.close()
        reference.append(([o.pose for o in outs], [o.image for o in outs]))
    # the 4 avatars look different (the published frame also shows the photo around the face, the same
    # for all): a session given the wrong avatar could not pass the MIN_PSNR check for the right one
    for i in range(4):
        for j in range(i + 1, 4):
            assert psnr(reference[i][1][0], reference[j][1][0]) < MIN_PSNR - 5
    return engine, packs, frames, reference


@pytest.fixture(scope="module")
def cluster():
    start_local_ray(2)
    cfg = ClusterConfig(replicas=2, avatars_per_replica=2, timeout_s=5.0, session_idle_s=3.0)
    store = deploy(cfg, ReenactConfig(), TOKEN)
    client = ClusterClient(cfg, TOKEN, store=store)
    yield cfg, client
    if ray.is_initialized():      # test_nothing_left_behind did not run to its end
        undeploy()
        serve.shutdown()
        ray.shutdown()


def front_end(client: ClusterClient) -> Engine:
    """A front-end engine: the in-process one's objects, its generator stage on the cluster."""
    return Engine("default", log=quiet, progress=False, generator_stage=RemoteGeneratorStage(client))


def same(ref_pose, ref_image, out, where: str) -> None:
    if ref_pose is None:
        assert out.pose is None, f"{where}: a face where the in-process engine found none"
    else:
        assert out.pose is not None, f"{where}: no face where the in-process engine found one"
        np.testing.assert_allclose(out.pose, ref_pose, atol=P_TOL, rtol=0, err_msg=where)
    assert out.image.shape == ref_image.shape
    db = psnr(out.image, ref_image)
    assert db >= MIN_PSNR, f"{where}: {db:.1f} dB"


def run_sessions(sessions, frames, ks, results) -> None:
    """Each session on its own thread (as WebRTC peers run) over frame numbers ks."""
    errors = []

    def drive(i):
        try:
            for k in ks:
                results[i][k] = sessions[i].process(frames[k % CLIP_FRAMES], k / RATE)
        except BaseException as e:   # reported below: a failed frame is a failed test here
            errors.append((i, e))

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def wait_replicas(n: int, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = serve.status().applications[APP]
        d = st.deployments["generator"]
        if st.status == "RUNNING" and d.replica_states.get("RUNNING", 0) == n and sum(d.replica_states.values()) == n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the deployment did not settle at {n} replicas: {serve.status().applications[APP]}")


def test_two_replicas_serve_four_sessions_with_the_engines_output(setup, cluster):
    engine, packs, frames, reference = setup
    cfg, client = cluster
    fe = front_end(client)
    stage = fe.generator_stage
    sessions = [fe.make_reenactor(str(p), **ReenactConfig().session()) for p in packs]
    results = [dict() for _ in sessions]
    half = CLIP_FRAMES // 2
    run_sessions(sessions, frames, range(half), results)
    first = stage.stats.summary()
    # two replicas served the four sessions, neither holding more than its LRU of two avatars
    assert first["replicas"] == 2 and first["sessions"] == 4, first
    assert first["most_held"] <= 2, first
    assert first["frames"] == 4 * (half + 1)   # and each session's first render, the avatar itself, at load

    # scale in to one replica (its LRU still two): the four avatars no longer fit, it must evict and reload
    deploy(dataclass_replace(cfg, replicas=1), ReenactConfig(), TOKEN)
    wait_replicas(1)
    survivor_before = dict(stage.stats.replicas)
    run_sessions(sessions, frames, range(half, CLIP_FRAMES), results)
    served = {s["replica"] for s in stage.stats.per_session.values()}
    assert len(served) == 1, served
    (last,) = served
    info = stage.stats.replicas[last]
    before = survivor_before.get(last, {"evictions": 0, "reloads": 0})
    assert info["held"] <= 2
    assert info["evictions"] > before["evictions"], (info, before)
    assert info["reloads"] > before["reloads"], (info, before)

    for i, s in enumerate(sessions):
        for k in range(CLIP_FRAMES):
            same(reference[i][0][k], reference[i][1][k], results[i][k], f"avatar {i} frame {k}")
        s.close()
    fe.close()
    deploy(cfg, ReenactConfig(), TOKEN)      # back to two replicas for the next test
    wait_replicas(2)


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_wrong_token_is_refused_and_no_http_proxy(cluster):
    cfg, client = cluster
    with pytest.raises(UserError, match="refused the token"):
        ClusterClient(cfg, "not-the-token-of-this-cluster", store=client.store).check_token()
    intruder = ClusterClient(cfg, "not-the-token-of-this-cluster", store=client.store)
    with pytest.raises(UserError, match="refused the token"):
        intruder.call("stats", "x" * 64)
    assert not serve.status().proxies     # front-ends call by handle; nothing serves HTTP


def test_the_local_cluster_listens_on_loopback_only(cluster):
    """Every listening socket of this process and of the Ray processes it started (GCS, raylet,
    workers, agents) is bound to loopback, with one exception Ray Serve 2.60 hard-codes: each
    replica's inter-deployment gRPC server binds [::]:0 (ray/serve/_private/replica.py), whatever the
    node address (docs/scaling.md, Security). Before keep_ray_on_loopback, 12 servers bound every
    interface."""
    import psutil
    me = psutil.Process()
    listening = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
            name = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(proc.pid, name, c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN]
    ray_procs = {p.pid for p in me.children(recursive=True)}
    assert len([1 for pid, _, _ in listening if pid in ray_procs]) >= 4, listening   # GCS, raylet, workers...
    outside = [(pid, name[:60], ip) for pid, name, ip in listening if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert all("ServeReplica" in name for _, name, _ in outside), outside
    assert len(outside) <= cluster[0].replicas, outside     # one per replica at most


def test_replica_killed_mid_stream(setup, cluster):
    """SIGKILL a replica while the four sessions stream and while a request is in flight on it: the
    in-flight request ends in ClusterUnavailable (a status frame in the live pipeline), every session
    frame is a result or a ClusterUnavailable, nobody crashes, each session resumes within 10 s of its
    first status frame, the victim's sessions go on on another replica, and every result still equals
    the in-process engine's."""
    engine, packs, frames, reference = setup
    cfg, client = cluster
    fe = front_end(client)
    stage = fe.generator_stage
    sessions = [fe.make_reenactor(str(p), **ReenactConfig().session()) for p in packs]
    log = [[] for _ in sessions]      # (k, "result" | "status", time)
    crashes, killed = [], {}

    def drive(i):
        try:
            for k in range(FRAMES):
                try:
                    out = sessions[i].process(frames[k % CLIP_FRAMES], k / RATE)
                except ClusterUnavailable:
                    log[i].append((k, "status", time.monotonic()))
                else:
                    log[i].append((k, "result", time.monotonic()))
                    same(reference[i][0][k], reference[i][1][k], out, f"avatar {i} frame {k}")
                time.sleep(0.08)   # about a camera's pace on this loaded machine
        except BaseException as e:
            crashes.append((i, repr(e)))

    def kill():
        try:
            while min(len(entries) for entries in log) < 6:
                time.sleep(0.05)
            victim = stage.stats.per_session[sessions[0].session]["replica"]
            killed["victim"] = victim
            killed["sessions"] = [i for i, s in enumerate(sessions)
                                  if stage.stats.per_session[s.session]["replica"] == victim]
            big = torch.randn(256, *engine.zoo.generator.latent_shape)   # ~1 s of rendering on the victim
            flight = {}

            def in_flight():
                try:
                    sessions[0].G.synthesize(big)
                    flight["result"] = "rendered"
                except ClusterUnavailable as e:
                    flight["result"] = f"unavailable: {e}"
                except BaseException as e:
                    flight["result"] = f"crash: {e!r}"
            t = threading.Thread(target=in_flight)
            t.start()
            time.sleep(0.3)
            os.kill(stage.stats.replicas[victim]["pid"], signal.SIGKILL)
            killed["t"] = time.monotonic()
            t.join(30)
            killed["in_flight"] = flight.get("result", "hung")
        except BaseException as e:
            crashes.append(("killer", repr(e)))

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(sessions))]
    threads.append(threading.Thread(target=kill))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not crashes, crashes
    assert killed["in_flight"].startswith("unavailable"), killed["in_flight"]
    for i, entries in enumerate(log):
        assert [k for k, _, _ in entries] == list(range(FRAMES)), f"session {i} lost frames"
        failed = [t for _, kind, t in entries if kind == "status"]
        if failed:
            resumed = [t for _, kind, t in entries if kind == "result" and t > failed[-1]]
            assert resumed, f"session {i} never resumed after the kill"
            took = resumed[0] - failed[0]     # its first status frame -> its first result after the last one
            print(f"session {i}: {len(failed)} status frame(s), resumed {took:.2f} s after the first")
            assert took <= 10.0, f"session {i} resumed {took:.1f} s after its first status frame"
        assert entries[-1][1] == "result", f"session {i} ended on a status frame"
        assert any(kind == "result" and t > killed["t"] for _, kind, t in entries)
    print(f"killed replica {killed['victim']} (sessions {killed['sessions']}); in flight: {killed['in_flight'][:80]}; "
          f"front-end: {stage.stats.summary()}")
    for i in killed["sessions"]:        # the victim's sessions went on elsewhere
        assert stage.stats.per_session[sessions[i].session]["replica"] != killed["victim"]
    for s in sessions:
        s.close()
    fe.close()


def test_webrtc_peer_through_the_cluster(setup, cluster, loopback_ice):
    """The WebRTC server (run_stream.py --webrtc --cluster) with the cluster's factory: a browser-like
    aiortc peer sends the clip and gets reenacted frames back, rendered on the replicas."""
    import asyncio

    import aiohttp

    from streamer.cluster.client import ClusterReenactorFactory
    from streamer.testing.rtc_client import ClientPeer, StampedCameraTrack
    from tests.stream_support import served
    engine, packs, frames, reference = setup
    cfg, client = cluster
    factory = ClusterReenactorFactory(ReenactConfig(progress=False), cfg, default_avatar=str(packs[0]),
                                      log=quiet, client=client)

    async def main():
        async with served(factory) as srv, aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(frames), keep_frames=20)
            await peer.connect()
            await peer.wait_frames(20, timeout=90)
            async with http.get(f"{srv.url}/status") as r:
                status = await r.json()
            await peer.close()
            return peer, status

    try:
        peer, status = asyncio.run(main())
    finally:
        factory.close()       # a client it was given: the cluster stays
    stage = factory.engine.generator_stage
    assert len(peer.frames) >= 20 and peer.frames[-1].shape[2] == 3
    assert status["peers"][0]["mode"] == "drive" and status["peers"][0]["processed"] >= 20
    assert stage.stats.frames >= 20 and stage.stats.failures == 0      # rendered on the replicas
    assert ray.is_initialized()


FRONT_END = """
import sys, time
import ray, torch
torch.set_num_threads(1)
from streamer.cluster.client import ClusterClient, RemoteGeneratorStage
from streamer.cluster.config import NAMESPACE, ClusterConfig
from streamer.reenact.engine import Engine
from tests.media import short_clip
import av
address, token, pack, clip = sys.argv[1:5]
ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
# a load generator: a frame of its own may wait longer than this front-end's (the 2 CPUs are shared)
client = ClusterClient(ClusterConfig(address=address, token=token, timeout_s=60.0), token)
engine = Engine("default", log=lambda m: None, progress=False, generator_stage=RemoteGeneratorStage(client))
session = engine.make_reenactor(pack)
with av.open(clip) as c:
    frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
print("session", session.session, flush=True)
k = 0
while True:
    session.process(frames[k % len(frames)], k / 24)
    print("frame", k, flush=True)
    k += 1
"""


def test_front_end_killed_mid_stream(setup, cluster, tmp_path):
    """A second front-end (its own process, a Ray driver of this cluster) streams, then is SIGKILLed:
    this front-end's session goes on without a failed frame and with the engine's output, no actor is
    left behind by the dead one, and the replicas forget its session once it has been silent for
    session_idle_s."""
    import subprocess
    import sys
    from pathlib import Path
    engine, packs, frames, reference = setup
    cfg, client = cluster
    clip = short_clip(tmp_path / "other.mp4", 12)
    actors_before = live_actors()
    root = Path(__file__).resolve().parents[1]
    errors = tmp_path / "other.stderr"
    with open(errors, "w") as err:
        other = subprocess.Popen([sys.executable, "-c", FRONT_END, ray.get_runtime_context().gcs_address, TOKEN,
                                  str(packs[2]), str(clip)], cwd=root, stdout=subprocess.PIPE,
                                 stderr=err, text=True, env={**os.environ, "GLOG_minloglevel": "3"})
    fe = front_end(client)
    mine = fe.make_reenactor(str(packs[1]), **ReenactConfig().session())
    try:
        their_session, their_frames = None, 0
        k = 0
        while their_frames < 5:
            assert other.poll() is None, f"the other front-end ended by itself: {errors.read_text()[-1500:]}"
            line = other.stdout.readline().split()
            if line and line[0] == "session":
                their_session = line[1]
            elif line and line[0] == "frame":
                their_frames += 1
            out = mine.process(frames[k % CLIP_FRAMES], k / RATE)
            same(reference[1][0][k], reference[1][1][k], out, f"frame {k} while the other front-end streams")
            k += 1
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        t_kill = time.monotonic()
        forgotten = False
        while k < FRAMES:       # this front-end goes on: no failed frame, the same output
            out = mine.process(frames[k % CLIP_FRAMES], k / RATE)
            same(reference[1][0][k], reference[1][1][k], out, f"frame {k} after the other front-end died")
            k += 1
            if not forgotten and time.monotonic() - t_kill > cfg.session_idle_s:
                stats = client.replica_stats(calls=8)
                forgotten = len(stats) == 2 and sum(s["sessions"] for s in stats.values()) == 1
            time.sleep(0.05)
        deadline = time.monotonic() + 15
        while not forgotten and time.monotonic() < deadline:
            stats = client.replica_stats(calls=8)
            forgotten = len(stats) == 2 and sum(s["sessions"] for s in stats.values()) == 1
            time.sleep(0.5)
        assert their_session is not None
        assert forgotten, f"the dead front-end's session is still held: {client.replica_stats(calls=8)}"
        assert fe.generator_stage.stats.failures == 0
        assert live_actors() == actors_before
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(10)
        mine.close()
        fe.close()


def live_actors() -> list[str]:
    from ray._private import state
    return sorted(f"{a['ActorClassName']} {a['State']}" for a in state.actors().values() if a["State"] != "DEAD")


def object_store_objects() -> int:
    from ray._private.internal_api import memory_summary
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    return int(text.split(" objects,")[0].rsplit(",", 1)[-1].split()[-1])


def test_nothing_left_behind(cluster):
    """After the front-ends closed and the deployment went: no actor alive (replicas, the pack store,
    Serve's controller), every CPU free (no task running or queued), nothing in the object store, no
    stage thread in the front-end."""
    cfg, client = cluster
    assert any("ServeReplica" in a for a in live_actors())   # the check below can see replicas
    client.close_deployment()
    serve.shutdown()
    deadline = time.monotonic() + 30
    while (live_actors() or object_store_objects() or ray.available_resources().get("CPU") != 2.0) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_actors() == []
    assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU") == 2.0
    assert object_store_objects() == 0
    assert not ray.util.list_named_actors(all_namespaces=True)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("generator-stage")]
    ray.shutdown()
