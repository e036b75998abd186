"""calibration.evaluation.evaluate_video (the paper's video protocol) and calibration.evaluation.fid: the metrics against
closed forms and independent readings, and a short end-to-end run on the bundled clip."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from calibration.evaluation import evaluate_video as ev
from calibration.evaluation.fid import fid_from_features, frechet_distance, gaussian_stats, load_extractor
from engines.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "assets" / "pexels_woman.mp4"
ASTRO = ROOT / "assets" / "astronaut.png"


# ------------------------------------------------------------------------------------------- FID
def test_frechet_distance_matches_closed_forms_and_scipy():
    # 1-D Gaussians: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 4 + 9 - 2 * 6, abs=1e-12)
    # commuting (diagonal) covariances: sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(
        3 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), abs=1e-10)
    # general case vs scipy's sqrtm (an independent implementation)
    from scipy import linalg
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.3
    m1, s1 = gaussian_stats(x)
    m2, s2 = gaussian_stats(y)
    assert np.allclose(m1, x.mean(0)) and np.allclose(s1, np.cov(x.T))
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(x, y) == pytest.approx(ref, rel=1e-8)
    assert abs(fid_from_features(x, x)) < 1e-9


def means_onnx(path: Path) -> Path:
    """A stand-in "Inception": NCHW [N,3,24,32] in [0,1] -> per-channel means [N,3]."""
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                           helper.make_node("Flatten", ["p"], ["f"])], "means",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 24, 32])],
                          [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_feature_extractor_and_bad_specs(tmp_path):
    extract = load_extractor(str(means_onnx(tmp_path / "means.onnx")))
    imgs = np.random.default_rng(1).integers(0, 256, (5, 40, 50, 3), dtype=np.uint8)
    ref = np.stack([np.asarray(Image.fromarray(im).resize((32, 24), Image.BILINEAR), np.float64).mean((0, 1)) / 255
                    for im in imgs])
    assert np.allclose(extract(imgs), ref, atol=1e-6)
    with pytest.raises(UserError, match="not found"):
        load_extractor(str(tmp_path / "missing.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        load_extractor(str(tmp_path / "junk.onnx"))
    with pytest.raises(UserError, match="give an ONNX file"):
        load_extractor("inception.pt")


# ------------------------------------------------------------------------------- landmarks, NME
def test_nme_closed_form():
    rng = np.random.default_rng(2)
    tgt = rng.uniform(0, 256, (478, 3))
    i, j = ev.MP68[ev.OUTER_EYES[0]], ev.MP68[ev.OUTER_EYES[1]]
    iod = np.linalg.norm(tgt[i, :2] - tgt[j, :2])
    shift = np.array([3.0, 4.0, 0.0])
    assert ev.nme(tgt + shift, tgt) == pytest.approx(5.0 / iod * 100)
    assert ev.nme(tgt + shift, tgt, aligned=True) == pytest.approx(0.0, abs=1e-9)
    assert ev.nme(tgt, tgt) == 0.0


def test_mp68_points_follow_the_68_point_layout():
    from engines.method.net3d import MediaPipeNet3D
    assert len(ev.MP68) == 68 and len(set(ev.MP68)) == 68
    with MediaPipeNet3D("image") as r:
        xy = r.read(np.asarray(Image.open(ASTRO).convert("RGB"))).landmarks[ev.MP68, :2]
    x, y = xy[:, 0], xy[:, 1]
    assert x[0] < x[8] < x[16] and y[8] == y[:17].max()                # jaw: ear to ear through the chin
    assert x[17] < x[21] < x[22] < x[26]                                # brows, image left to right
    assert y[17:27].max() < y[36:48].min()                              # brows above the eyes
    assert x[36] < x[39] < x[42] < x[45]                                # eye corners in order
    assert y[27] < y[30] < y[33] < y[51]                                # nose bridge down to the lip
    assert x[48] < x[51] < x[54] and y[51] < y[57] and y[62] < y[66]    # mouth corners, lips


# ------------------------------------------------------------------------------------ end to end
def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = k
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalvid")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEREENACT_CACHE", str(tmp / "cache"))
    with av.open(str(CLIP)) as c:   # frames 240-249: head moving, big smile
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(250), c.decode(video=0)) if i >= 240]
    left = write_clip(tmp / "drv_left.mp4", frames)
    mirror = write_clip(tmp / "drv_mirror.mp4", [np.ascontiguousarray(f[:, ::-1]) for f in frames])
    out = tmp / "out"
    weights = tmp / "weights"          # random LPIPS weights in the documented files: exercises the path
    weights.mkdir()
    from engines.weights.random_weights import random_lpips
    alex, lin = random_lpips(seed=3)
    torch.save(lin, weights / "alex.pth")
    torch.save(alex, weights / "alexnet-owt-7be5be79.pth")
    code = ev.main(["--clips", str(left), str(mirror), "--max-frames", "8", "--fast-enroll", "--json",
                    str(out / "r.json"), "--report", str(out / "report.md"), "--figure-clips", "left", "--quiet",
                    "--weights", str(weights), "--fid-features", str(means_onnx(tmp / "means.onnx"))])
    mp.undo()
    assert code == 0
    return json.loads((out / "r.json").read_text()), out, left, mirror


@pytest.mark.slow
def test_run_covers_self_and_cross_pairs_in_every_mode(run):
    res, out, left, mirror = run
    pairs = {(p["source"], p["driver"], p["mode"]): p for p in res["pairs"]}
    names = ("drv_left", "drv_mirror")
    assert set(pairs) == {(s, d, m) for s in names for d in names for m in ("relative", "absolute", "static")}
    for (s, d, m), p in pairs.items():
        r = p["summary"]
        assert p["kind"] == ("self" if s == d else "cross")
        assert r["frames"] == (7 if s == d else 8)           # self: the source frame is not a target
        assert -1 <= r["csim"] <= 1 and r["pose"] >= 0 and r["exp"] >= 0
        selfr = s == d
        assert (r["nme"] is not None) == selfr
        assert (r["lpips"] is not None) == selfr and (r["fid"] is not None) == selfr   # self only
        if selfr:
            assert r["lpips"] >= 0 and np.isfinite(r["fid"]) and r["fid"] >= -1e-9
        if m == "static":                                     # a still output has no correlation
            assert r["r_yaw"] is None and r["r_jawOpen"] is None
        else:
            assert all(r[k] is None or -1 <= r[k] <= 1 for k in ("r_yaw", "r_pitch", "r_jawOpen"))
    assert set(res["summary"]) == {"self", "cross"} and set(res["summary"]["self"]) == {"relative", "absolute", "static"}
    assert res["meta"]["lpips"] is True and res["meta"]["fid"] is True and len(res["meta"]["directions_sha256"]) == 64


@pytest.mark.slow
def test_static_cross_error_is_the_drivers_own_motion(run):
    """Holding the avatar still against 'avatar pose + driver motion' errs by exactly the driver's motion
    since its first frame: recomputed here from the runtime's readings of the driver alone."""
    from engines.method.net3d import MediaPipeNet3D
    res, out, left, mirror = run
    p = [pp for pp in res["pairs"] if (pp["source"], pp["driver"], pp["mode"]) == ("drv_left", "drv_mirror", "static")][0]
    with MediaPipeNet3D("image") as r, av.open(str(mirror)) as c:
        ps = [r.read(f.to_ndarray(format="rgb24")).p for _, f in zip(range(8), c.decode(video=0))]
    motion = np.abs(np.array(ps) - ps[0])
    assert p["summary"]["pose"] == pytest.approx(motion[:, :3].mean(), abs=1e-9)
    assert p["summary"]["exp"] == pytest.approx(motion[:, 3:].mean(), abs=1e-9)
    assert p["summary"]["err_jawOpen"] == pytest.approx(motion[:, 3].mean(), abs=1e-9)


@pytest.mark.slow
def test_report_table_and_licence_filtered_figures(run):
    res, out, left, mirror = run
    text = (out / "report.md").read_text()
    assert "| self | paper, vox256 (VoxCeleb1, Table 1) | 0.66 | – | 0.11 | 35.0 | 14.1 |" in text
    assert "| cross | default zoo, relative motion (product default) |" in text
    assert "LPIPS: no LPIPS weights" not in text and "python -m calibration.evaluation.evaluate_video --clips" in text
    figs = sorted(p.name for p in (out / "evaluation").iterdir())
    # only clips matching --figure-clips get images (source and driver both)
    assert figs == ["drv_left__drv_left_curves.png", "drv_left__drv_left_strip.png"]
    assert "](evaluation/drv_left__drv_left_strip.png)" in text and "drv_mirror__" not in "".join(figs)
    strip = Image.open(out / "evaluation" / "drv_left__drv_left_strip.png")
    assert strip.height == 256 and strip.width >= 6 * 128


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv, msg in ((["--clips", str(tmp_path / "none.mp4"), "--json", str(tmp_path / "r.json")], "no such file"),
                      (["--clips", str(CLIP), "--json", str(tmp_path / "r.json"), "--modes", "sideways"],
                       "--modes sideways: choose from relative, absolute")):
        with pytest.raises(SystemExit) as e:
            ev.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and msg in err[0]
