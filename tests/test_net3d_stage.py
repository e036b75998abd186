"""The engine's batched Net3D stage (streamer.reenact.net3d_stage): MediaPipe's networks ported to torch,
one landmark-net call for the frames of several sessions. Checked against MediaPipe's own runtime."""
import threading

import av
import numpy as np
import pytest
import torch
from PIL import Image

from engines.core.errors import UserError
from engines.method.net3d import MediaPipeNet3D
from engines.method.net3d_torch import Reader, TorchNet3D
from streamer.reenact.engine import Engine, net3d_is_torch
from streamer.reenact.net3d_stage import Net3DStage
from tests.media import CLIP


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Every 4th of the bundled clip's first 120 frames (640x360, a talking head that turns)."""
    out = []
    with av.open(str(CLIP)) as c:
        for k, f in enumerate(c.decode(video=0)):
            if k >= 120:
                break
            if k % 4 == 0:
                out.append(f.to_ndarray(format="rgb24"))
    return out


@pytest.fixture(scope="module")
def net() -> TorchNet3D:
    return TorchNet3D.from_task()


def test_the_stage_reads_what_mediapipes_runtime_reads(frames, net):
    """Pose and expressions against the runtime in video mode (it tracks the same way): angles within
    a degree or two, expression scores within a few hundredths (the runtime also smooths its
    landmarks, the port does not)."""
    stage = Net3DStage(net)
    reader = stage.reader()
    ours, ref = [], []
    with MediaPipeNet3D("video") as mp:
        for k, f in enumerate(frames):
            a, b = mp.read(f, k * 133), reader.read(f)
            assert a is not None and b is not None, k
            ref.append(a.p)
            ours.append(b.p)
    reader.close()
    ours, ref = np.array(ours), np.array(ref)
    diff = np.abs(ours - ref)
    assert np.median(diff[:, :3]) < 0.5 and diff[:, :3].max() < 2.0, diff[:, :3].max(0)
    assert np.median(diff[:, 3:]) < 0.02 and diff[:, 3:].max() < 0.2, diff[:, 3:].max(0)
    assert np.std(ref[:, 0]) > 2.0      # the head turns, so the angles are a real check
    assert np.corrcoef(ours[:, 0], ref[:, 0])[0, 1] > 0.97
    assert reader.detections == 1       # the detector ran once; the track held for the rest
    assert stage.worker.scheduler is None      # the last reader closed: no worker thread left


def test_sessions_share_landmark_net_calls_and_read_as_if_alone(frames, net):
    """Two sessions with frames of different sizes (640x360 and 480x270) read in one call each frame
    and get what each reads alone."""
    small = [np.asarray(Image.fromarray(f).resize((480, 270), Image.BILINEAR)) for f in frames[:12]]
    big = frames[:12]

    def alone(seq):
        stage = Net3DStage(net, max_batch=1)
        r = stage.reader()
        out = [r.read(f).p for f in seq]
        r.close()
        return np.array(out)

    ref_big, ref_small = alone(big), alone(small)
    # a budget that covers a CPU batch of two (a GPU's is a fraction of a millisecond)
    stage = Net3DStage(net, max_batch=2, budget_ms=300)
    readers = [stage.reader(), stage.reader()]
    # these drivers run in lock-step, not at a camera's steady rate, so the scheduler's arrival
    # prediction has nothing to go on: it waits for the pair (or the budget) instead
    stage.worker.scheduler.predict = False
    got: list[list] = [[], []]
    barrier = threading.Barrier(2)

    def drive(i, seq):
        for f in seq:
            barrier.wait()   # both sessions' frames arrive together, as two cameras at one rate
            got[i].append(readers[i].read(f).p)

    threads = [threading.Thread(target=drive, args=(i, s)) for i, s in enumerate((big, small))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = stage.stats.summary()
    for r in readers:
        r.close()
    np.testing.assert_allclose(np.array(got[0]), ref_big, atol=1e-3)
    np.testing.assert_allclose(np.array(got[1]), ref_small, atol=1e-3)
    assert summary["sessions"] == 2 and summary["frames"] >= 24
    assert summary["mean_batch"] > 1.5, summary   # one call served both sessions on most frames
    # the two sizes really were read as different frames: the same face, pose within a degree
    assert np.abs(ref_big[:, :3] - ref_small[:, :3]).max() < 1.5


def test_no_face_reads_none_then_the_face_is_found_again(frames, net):
    stage = Net3DStage(net)
    r = stage.reader()
    assert r.read(frames[0]) is not None
    # the track is lost, the detector looks again on the same frame and finds nothing: dropped
    assert r.read(np.full_like(frames[0], 127)) is None and r.roi is None and r.detections == 2
    assert r.read(frames[1]) is not None and r.detections == 3
    r.close()


def test_image_mode_reads_each_frame_on_its_own_like_the_runtimes_image_mode(frames, net):
    """The same reader without a track (the avatar's renders at load time, the feedback loop): the
    detector runs on every frame, and it reads what MediaPipe's image mode reads."""
    reader = Reader(net)
    with MediaPipeNet3D("image") as mp:
        for f in frames[:6]:
            ours, ref = reader.read(f), mp.read(f)
            assert ours is not None and ref is not None
            assert np.abs(ours.p[:3] - ref.p[:3]).max() < 2.0 and np.abs(ours.p[3:] - ref.p[3:]).max() < 0.2
    assert reader.detections == 6 and reader.roi is None
    assert reader.read(np.zeros((360, 640, 3), np.uint8)) is None


def test_the_engine_reads_with_the_stage_when_asked(frames, tmp_path):
    from tests.media import quick_astronaut_pack
    engine = Engine("default", log=lambda m: None, progress=False, net3d="torch")
    try:
        pack = quick_astronaut_pack(engine.zoo, tmp_path)
        r = engine.make_reenactor(pack)
        outs = [r.process(f, k / 7.5) for k, f in enumerate(frames[:8])]
        assert all(o.face_found for o in outs)
        assert engine.net3d_stage.stats.frames == 8
        assert np.abs(r.dp[:3].numpy()).max() > 0.01   # the driver's turn reached the motion state
        r.close()
    finally:
        engine.close()


def test_which_net3d_runs():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not net3d_is_torch("auto", "default", cpu)     # MediaPipe's runtime is faster on the CPU
    assert net3d_is_torch("auto", "default", gpu)
    assert not net3d_is_torch("auto", "vox256", gpu)      # vox256 reads with DECA
    assert net3d_is_torch("torch", "default", cpu)
    with pytest.raises(UserError, match="default zoo"):
        net3d_is_torch("torch", "vox256", cpu)
    with pytest.raises(UserError, match="must be one of"):
        net3d_is_torch("tflite", "default", cpu)


def test_face_geometry_matches_mediapipe_matrix():
    av = pytest.importorskip("av")
    pytest.importorskip("mediapipe")
    from engines.method.net3d import MediaPipeNet3D
    from engines.method.pose import euler_from_rotation
    from engines.models.face_geometry import FaceGeometry
    geo = FaceGeometry()
    worst, n = 0.0, 0
    with MediaPipeNet3D("video") as net, av.open("assets/pexels_woman.mp4") as clip:
        for i, fr in enumerate(clip.decode(video=0)):
            if i % 15:
                continue
            img = fr.to_ndarray(format="rgb24")
            r = net.read(img, int(fr.time * 1000))
            if r is None:
                continue
            m = r.matrix[:3, :3] / np.cbrt(np.linalg.det(r.matrix[:3, :3]))
            got = euler_from_rotation(geo(torch.from_numpy(r.landmarks)[None], img.shape[1], img.shape[0])[0].double())
            worst = max(worst, float(np.abs(got.numpy() - euler_from_rotation(m)).max()))
            n += 1
            if n == 8:
                break
    assert n >= 5 and worst <= 1e-3


BLOCKER = '''
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("mediapipe", "av", "cv2", "matplotlib", "aiortc"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Absent())
'''


def test_the_engine_runs_on_a_machine_without_mediapipe_or_pyav(frames, tmp_path):
    """scripts/gpu_bench.sh's flow where neither is installed (the GPU image): --net3d torch reads the
    drivers and the avatar's renders with the port, and the clip comes as a frames file."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from engines.method.zoos import load_zoo
    from tests.media import quick_astronaut_pack
    pack = quick_astronaut_pack(load_zoo("default"), tmp_path)
    np.savez_compressed(tmp_path / "clip.npz", frames=np.stack(frames[:10]), rate=25.0)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'site'}:{root}"}
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "streamer.bench", "--sessions", "2", "--net3d", "torch", "--source",
                        str(tmp_path / "clip.npz"), "--avatar", str(pack), "--seconds", "1.5", "--json", str(out)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["net3d_stage"]["sessions"] == 2 and res["net3d_stage"]["frames"] > 10
    assert min(res["fps_per_session"]) > 0
    # and the blocker works: the same run reading with MediaPipe fails, in one line
    r = subprocess.run([sys.executable, "-m", "streamer.bench", "--sessions", "1", "--net3d", "mediapipe",
                        "--source", str(tmp_path / "clip.npz"), "--avatar", str(pack), "--seconds", "1"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "MediaPipe's runtime is not installed" in r.stderr and "--net3d torch" in r.stderr
