"""The PyTorch port of MediaPipe FaceLandmarker (engines/models/facelandmarker.py, engines/models/facedetector.py,
engines/models/tflite_torch.py) against two independent references:

1. the LiteRT interpreter running the very same .tflite files on the very same input tensors
   (raw-network equivalence: only float summation order differs);
2. MediaPipe's own FaceLandmarker / FaceDetector runtime end to end (crop, ROI tracking, landmark
   projection, blendshape subset, detector decoding and NMS are all ours on that path).

Tolerances are a few times the worst value measured on all bundled and shared images (numbers in
the comments, as fractions of the inter-ocular distance, IOD, where it applies). The end-to-end
residual comes from MediaPipe's crop being rounded to uint8 and sampled with OpenCV's fixed-point
bilinear weights, while ours is a float (differentiable) bilinear warp; with the crop rounded to
uint8 too the residual halves (checked below).
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engines.models.facedetector import FaceDetectorNet
from engines.models.facelandmarker import (
    BLENDSHAPE_LANDMARKS,
    BLENDSHAPE_NAMES,
    BlendshapeNet,
    FaceLandmarkerTorch,
    LandmarkNet,
    crop,
    read_task_file,
    roi_from_landmarks,
    uncrop_landmarks,
)
from tests.mediapipe_faces import video_frames

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PEXELS_FRAMES = (100, 260, 403)  # frontal smile, turned, rolled (-26 degrees: exercises rotation and z)
SHARED_PORTRAITS = ("portrait_obama.jpg", "portrait_mona_lisa.jpg", "portrait_einstein_bw.jpg",
                    "portrait_pyfeat_single_face.jpg")
SHARED_CLIPS = ("driving_lp_d9_man_glasses.mp4", "driving_lp_d13_selfie_vertical.mp4",
                "driving_pyfeat_woman_pexels.mp4")
TRACK_STEP_MS = 1_000_000  # VIDEO-mode timestamps this far apart make MediaPipe's landmark smoothing ~inert
TRACK_FRAMES = 5  # frame 0 uses the detector; smoothing settles after ~3 tracked frames


# ---- inputs ---------------------------------------------------------------------------------

def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@functools.lru_cache(maxsize=None)
def _core_images() -> dict[str, np.ndarray]:
    astro = Image.open(ASSETS / "astronaut.png").convert("RGB")
    imgs = {
        "astronaut": np.asarray(astro),
        # rolled 30 degrees: the ROI rotation path; cropped so the ROI leaves the image top/left:
        # the replicated border and the unclamped projection.
        "astronaut_rot30": np.asarray(astro.rotate(30, resample=Image.BICUBIC)),
        "astronaut_edge": np.asarray(astro.crop((150, 60, 512, 512))),
    }
    for i, f in zip(PEXELS_FRAMES, video_frames(ASSETS / "pexels_woman.mp4", PEXELS_FRAMES)):
        imgs[f"pexels_woman#{i}"] = f
    return imgs


def _shared_images(shared: Path) -> dict[str, np.ndarray]:
    media = shared / "media"
    imgs = {}
    for name in SHARED_PORTRAITS:
        if (media / name).is_file():
            imgs[name] = _load_rgb(media / name)
    for name in SHARED_CLIPS:
        if (media / name).is_file():
            imgs[f"{name}#150"] = video_frames(media / name, (150,))[0]
    if not imgs:
        pytest.skip("no shared media files")
    return imgs


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255


# ---- references -----------------------------------------------------------------------------

def _mp_image(img):
    import mediapipe as mp
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img))


def _landmarker(video: bool, num_faces: int = 1):
    from mediapipe.tasks.python import BaseOptions, vision

    from engines.core.modelfiles import model_path

    mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
    opts = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(model_path("face_landmarker"))),
                                        running_mode=mode, output_face_blendshapes=True, num_faces=num_faces)
    from engines.core.quiet import native_quiet
    with native_quiet():   # MediaPipe's native start-up lines
        return vision.FaceLandmarker.create_from_options(opts)


def _as_arrays(res, w, h):
    """MediaPipe result -> list of (landmarks [478, 3] in pixels (x*W, y*H, z*W), blendshapes [52], names)."""
    out = []
    for lms, bs in zip(res.face_landmarks, res.face_blendshapes):
        lm = np.array([[p.x * w, p.y * h, p.z * w] for p in lms], np.float64)
        out.append((lm, np.array([c.score for c in bs]), [c.category_name for c in bs]))
    return out


_TRACKED: dict[str, object] = {}


def mediapipe_tracked(name: str, img: np.ndarray):
    """The same image fed TRACK_FRAMES times in VIDEO mode: from the 2nd frame on, MediaPipe crops the
    ROI tracked from the previous frame's landmarks. Returns (previous, last) frame results or None.
    Cached by name (several tests use the same references)."""
    if name in _TRACKED:
        return _TRACKED[name]
    h, w = img.shape[:2]
    lm = _landmarker(video=True)
    try:
        results = [_as_arrays(lm.detect_for_video(_mp_image(img), k * TRACK_STEP_MS), w, h)
                   for k in range(TRACK_FRAMES)]
    finally:
        lm.close()
    _TRACKED[name] = (results[-2][0], results[-1][0]) if results[-1] and results[-2] else None
    return _TRACKED[name]


def litert(tflite_name: str, x: np.ndarray) -> list[np.ndarray]:
    """Run one .tflite from the bundle on a batch, item by item (the files have batch 1)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=read_task_file(tflite_name))
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    res = [[] for _ in outs]
    for item in x:
        it.set_tensor(inp["index"], item[None].astype(np.float32))
        it.invoke()
        for r, o in zip(res, outs):
            r.append(it.get_tensor(o["index"]).copy())
    return [np.stack(r) for r in res]


def _iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[33, :2] - lm[263, :2]))


# ---- our nets -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def landmarker(torch_threads) -> FaceLandmarkerTorch:
    return FaceLandmarkerTorch.from_task()


@pytest.fixture(scope="module")
def detector(torch_threads) -> FaceDetectorNet:
    return FaceDetectorNet.from_task()


# ---- 1. raw networks vs LiteRT ----------------------------------------------------------------

def _face_crops(images: dict[str, np.ndarray]):
    """256x256 crops of every face on MediaPipe's tracked ROI, and MediaPipe's landmarks."""
    crops, lms = [], []
    for name, img in images.items():
        tracked = mediapipe_tracked(name, img)
        assert tracked is not None, "MediaPipe found no face"
        prev, last = tracked
        h, w = img.shape[:2]
        roi = roi_from_landmarks(torch.tensor(prev[0][None, :, :2], dtype=torch.float32), w, h)
        crops.append(crop(_to_tensor(img), roi))
        lms.append(last[0])
    return torch.cat(crops), np.stack(lms)


def _check_raw_nets(landmarker, images):
    crops, lms = _face_crops(images)
    # landmark net, whole batch at once (batch > 1 although the .tflite has batch 1)
    ref_lm, ref_presence, ref_tongue = litert("face_landmarks_detector.tflite", crops.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        raw_lm, logit, tongue = landmarker.landmark_net.net(crops)  # the graph's own outputs
        lm, presence = landmarker.landmark_net(crops)
    b = len(crops)
    # measured max |diff|: 4e-4 px on landmarks spanning ~30..230 px, 2e-5 on presence logits (~15..22)
    np.testing.assert_allclose(raw_lm.numpy(), ref_lm.reshape(raw_lm.shape), rtol=0, atol=3e-3)
    np.testing.assert_allclose(lm.numpy(), ref_lm.reshape(b, 478, 3), rtol=0, atol=3e-3)
    np.testing.assert_allclose(logit.numpy().reshape(b), ref_presence.reshape(b), rtol=0, atol=5e-4)
    np.testing.assert_allclose(tongue.numpy().reshape(b), ref_tongue.reshape(b), rtol=0, atol=1e-5)
    # MediaPipe's presence score is the sigmoid of the logit output
    np.testing.assert_allclose(presence.numpy(), 1 / (1 + np.exp(-ref_presence.reshape(b))), rtol=0, atol=1e-6)

    # blendshape net on MediaPipe's own landmarks (pixels), 146-point subset
    pts = lms[:, list(BLENDSHAPE_LANDMARKS), :2].astype(np.float32)
    (ref_bs,) = litert("face_blendshapes.tflite", pts)
    with torch.no_grad():
        bs = landmarker.blendshape_net(torch.from_numpy(lms[..., :2].astype(np.float32)))
    # measured max |diff| 2.2e-5 on scores in [0, 1] (inputs are pixel coordinates up to ~1000)
    np.testing.assert_allclose(bs.numpy(), ref_bs.reshape(b, 52), rtol=0, atol=1e-4)


def test_raw_nets_match_litert(landmarker):
    _check_raw_nets(landmarker, _core_images())


def test_raw_nets_match_litert_shared(landmarker, shared_dir):
    _check_raw_nets(landmarker, _shared_images(shared_dir))


def _check_detector_raw(detector, images):
    xs = torch.cat([detector.letterbox(_to_tensor(img))[0] for img in images.values()])
    ref_reg, ref_cls = litert("face_detector.tflite", xs.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        reg, cls = detector.raw(xs)
    b = len(xs)
    # measured max |diff| / max |ref|: 6.5e-5 (regressors, up to ~150 px), 4.4e-4 (logits, up to ~50)
    ref_reg, ref_cls = ref_reg.reshape(b, 896, 16), ref_cls.reshape(b, 896)
    assert np.abs(reg.numpy() - ref_reg).max() <= 3e-4 * np.abs(ref_reg).max()
    assert np.abs(cls.numpy() - ref_cls).max() <= 2e-3 * np.abs(ref_cls).max()


def test_detector_raw_matches_litert(detector):
    _check_detector_raw(detector, _core_images())


def test_detector_raw_matches_litert_shared(detector, shared_dir):
    imgs = _shared_images(shared_dir)
    for extra in ("noface_coffee.png", "twofaces_obama_biden.jpg"):
        if (shared_dir / "media" / extra).is_file():
            imgs[extra] = _load_rgb(shared_dir / "media" / extra)
    _check_detector_raw(detector, imgs)


# ---- 2. end to end vs MediaPipe's runtime ------------------------------------------------------

def _check_tracked(landmarker, images):
    """(a) blendshapes from MediaPipe's landmarks; (b) landmarks on the ROI tracked from MediaPipe's
    previous-frame landmarks, through our crop, net and projection."""
    worst = {}
    for name, img in images.items():
        tracked = mediapipe_tracked(name, img)
        assert tracked is not None, f"{name}: MediaPipe found no face"
        (prev_lm, _, _), (ref_lm, ref_bs, names) = tracked
        assert tuple(names) == BLENDSHAPE_NAMES
        h, w = img.shape[:2]
        iod = _iod(ref_lm)
        x = _to_tensor(img)
        roi = roi_from_landmarks(torch.tensor(prev_lm[None, :, :2], dtype=torch.float32), w, h)
        with torch.no_grad():
            bs_mp = landmarker.blendshape_net(torch.tensor(ref_lm[None, :, :2], dtype=torch.float32))[0].numpy()
            out = landmarker(x, roi)
            # MediaPipe's crop is rounded to uint8; rounding ours isolates that source of difference
            lm_q, _ = landmarker.landmark_net(torch.round(crop(x, roi) * 255) / 255)
            lm_q = uncrop_landmarks(lm_q, roi, image_wh=(w, h))[0].numpy()
        lm = out["landmarks"][0].numpy()
        err = np.linalg.norm(lm[:, :2] - ref_lm[:, :2], axis=1) / iod
        err_q = np.linalg.norm(lm_q[:, :2] - ref_lm[:, :2], axis=1) / iod
        stats = {
            "bs_from_mp_landmarks": np.abs(bs_mp - ref_bs).max(),  # measured <= 2.2e-5
            "xy_mean": err.mean(),  # measured <= 6.7e-4 IOD
            "xy_max": err.max(),  # measured <= 2.2e-3 IOD
            "z_max": np.abs(lm[:, 2] - ref_lm[:, 2]).max() / iod,  # measured <= 5.0e-3 IOD
            "xy_mean_uint8_crop": err_q.mean(),  # measured <= 2.2e-4 IOD
            "xy_max_uint8_crop": err_q.max(),  # measured <= 7.5e-4 IOD
            "bs": np.abs(out["blendshapes"][0].numpy() - ref_bs).max(),  # measured <= 0.014
        }
        print(name, {k: float(f"{v:.3g}") for k, v in stats.items()})
        for k, v in stats.items():
            worst[k] = max(worst.get(k, 0.0), v)
        assert out["presence"].item() > 0.5
    assert worst["bs_from_mp_landmarks"] < 1e-4
    assert worst["xy_mean"] < 2e-3
    assert worst["xy_max"] < 6e-3
    assert worst["z_max"] < 1.5e-2
    assert worst["xy_mean_uint8_crop"] < 7e-4
    assert worst["xy_max_uint8_crop"] < 2.5e-3
    assert worst["bs"] < 0.04


def test_tracked_roi_matches_mediapipe(landmarker):
    _check_tracked(landmarker, _core_images())


def test_tracked_roi_matches_mediapipe_shared(landmarker, shared_dir):
    _check_tracked(landmarker, _shared_images(shared_dir))


def _check_image_mode(landmarker, detector, images, num_faces=1):
    """IMAGE mode (no tracking, no smoothing): MediaPipe's detector ROI -> landmarks, all ours."""
    lmk = _landmarker(video=False, num_faces=num_faces)
    try:
        for name, img in images.items():
            h, w = img.shape[:2]
            refs = _as_arrays(lmk.detect(_mp_image(img)), w, h)
            x = _to_tensor(img)
            with torch.no_grad():
                dets = detector(x, max_faces=num_faces)[0]
            assert len(dets["scores"]) == len(refs), name
            for ref_lm, ref_bs, _ in refs:
                # pair each MediaPipe face with our detection nearest to it
                centre = torch.tensor(ref_lm[:, :2].mean(0), dtype=torch.float32)
                roi = dets["rois"][torch.argmin((dets["rois"][:, :2] - centre).norm(dim=1))]
                with torch.no_grad():
                    out = landmarker(x, roi)
                iod = _iod(ref_lm)
                err = np.linalg.norm(out["landmarks"][0, :, :2].numpy() - ref_lm[:, :2], axis=1) / iod
                print(name, f"mean {err.mean():.2e} max {err.max():.2e} IOD, "
                      f"bs {np.abs(out['blendshapes'][0].numpy() - ref_bs).max():.3f}")
                # measured: mean <= 7.6e-4, max <= 2.7e-3 IOD, blendshapes <= 0.013
                assert err.mean() < 3e-3 and err.max() < 8e-3, name
                assert np.abs(out["blendshapes"][0].numpy() - ref_bs).max() < 0.04, name
    finally:
        lmk.close()


def test_detector_pipeline_matches_mediapipe_image_mode(landmarker, detector):
    _check_image_mode(landmarker, detector, _core_images())


def test_detector_pipeline_matches_mediapipe_image_mode_shared(landmarker, detector, shared_dir):
    imgs = _shared_images(shared_dir)
    _check_image_mode(landmarker, detector, imgs)
    two = shared_dir / "media" / "twofaces_obama_biden.jpg"
    if two.is_file():
        _check_image_mode(landmarker, detector, {"two": _load_rgb(two)}, num_faces=2)


def _mediapipe_detections(img, iou):
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=read_task_file("face_detector.tflite")),
                                      min_detection_confidence=0.5, min_suppression_threshold=iou)
    from engines.core.quiet import native_quiet
    with native_quiet():
        fd = vision.FaceDetector.create_from_options(opts)
    try:
        res = fd.detect(_mp_image(img))
    finally:
        fd.close()
    h, w = img.shape[:2]
    return [(np.array([[k.x * w, k.y * h] for k in d.keypoints]), d.categories[0].score,
             np.array([d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height]))
            for d in res.detections]


def _check_detector_vs_mediapipe(detector, imgs):
    for name, img in imgs.items():
        refs = _mediapipe_detections(img, iou=0.3)
        with torch.no_grad():
            ours = detector(_to_tensor(img), iou_threshold=0.3)[0]
        assert len(ours["scores"]) == len(refs), name
        for (kp, score, box), kk, ss, bb in zip(refs, ours["keypoints"], ours["scores"], ours["boxes"]):
            size = float(bb[2] - bb[0])
            # measured: keypoints <= 0.18% of the box width, scores <= 1e-3 apart
            assert np.abs(kk.numpy() - kp).max() < 0.01 * size, name
            assert abs(ss.item() - score) < 5e-3, name
            # MediaPipe reports the pixel box truncated to ints
            np.testing.assert_allclose(box, [bb[0], bb[1], bb[2] - bb[0], bb[3] - bb[1]], atol=2.0)


def test_detector_matches_mediapipe_face_detector(detector):
    _check_detector_vs_mediapipe(detector, _core_images())


def test_detector_matches_mediapipe_face_detector_shared(detector, shared_dir):
    media = shared_dir / "media"
    names = ["portrait_obama.jpg", "twofaces_obama_biden.jpg", "noface_coffee.png", "portrait_mona_lisa.jpg"]
    imgs = {n: _load_rgb(media / n) for n in names if (media / n).is_file()}
    if not imgs:
        pytest.skip("no shared media files")
    _check_detector_vs_mediapipe(detector, imgs)


# ---- 3. geometry and gradients ------------------------------------------------------------------

def test_crop_and_uncrop_agree_closed_form():
    """On a linear ramp image bilinear sampling is exact, so the crop's value at crop pixel (j, i)
    must equal the image coordinate uncrop_landmarks gives for (j, i)."""
    h, w = 300, 400
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    image = torch.stack([xs, ys])[None]
    roi = torch.tensor([[210.0, 140.0, 120.0, 90.0, 0.6]], dtype=torch.float64)  # fully inside the image
    patch = crop(image, roi, size=64)
    jj, ii = torch.meshgrid(torch.arange(64.0, dtype=torch.float64), torch.arange(64.0, dtype=torch.float64),
                            indexing="xy")
    pts = torch.stack([jj, ii], dim=-1).reshape(1, -1, 2)
    mapped = uncrop_landmarks(pts, roi, size=64).reshape(64, 64, 2)
    torch.testing.assert_close(patch[0].permute(1, 2, 0), mapped, rtol=0, atol=1e-9)


def test_roi_from_landmarks_closed_form():
    """Square of side 1.5 x the long side of the landmark box, rotation from point 33 to 263."""
    lm = torch.zeros(1, 478, 2)
    lm[0, :, 0] = torch.linspace(100, 200, 478)  # box 100..200 x 50..110
    lm[0, :, 1] = torch.linspace(50, 110, 478)
    lm[0, 33] = torch.tensor([120.0, 80.0])
    lm[0, 263] = torch.tensor([180.0, 80.0 + 60.0 * np.tan(0.2)])
    roi = roi_from_landmarks(lm, 640, 480)[0]
    torch.testing.assert_close(roi, torch.tensor([150.0, 80.0, 150.0, 150.0, 0.2]), rtol=0, atol=1e-5)


def test_gradients_reach_the_image(landmarker):
    img = _core_images()["astronaut"]
    tracked = mediapipe_tracked("astronaut", img)
    h, w = img.shape[:2]
    roi = roi_from_landmarks(torch.tensor(tracked[0][0][None, :, :2], dtype=torch.float32), w, h)
    x = _to_tensor(img).requires_grad_(True)
    out = landmarker(x, roi)
    loss = out["landmarks"][..., :2].pow(2).mean() + out["blendshapes"].sum() + out["presence"].sum()
    loss.backward()
    g = x.grad
    assert torch.isfinite(g).all()
    inside = g[..., 60:200, 150:300].abs().sum()  # the face region
    assert inside > 0 and (g != 0).float().mean() > 0.01
    for p in landmarker.parameters():
        assert p.grad is None  # weights are frozen constants


def test_batch_and_dtype_consistency(landmarker):
    crops = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lm_b, pr_b = landmarker.landmark_net(crops)
        lm_1, pr_1 = landmarker.landmark_net(crops[1:2])
    torch.testing.assert_close(lm_b[1:2], lm_1, rtol=0, atol=1e-3)
    torch.testing.assert_close(pr_b[1:2], pr_1, rtol=0, atol=1e-5)
    # weights are module state: dtype/device moves reach every constant
    net16 = LandmarkNet.from_task().half()
    assert {t.dtype for t in list(net16.parameters()) + list(net16.buffers())} == {torch.float16}
    pts = torch.rand(2, 478, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 200
    bs64 = BlendshapeNet.from_task().double()
    with torch.no_grad():
        torch.testing.assert_close(bs64(pts).float(), landmarker.blendshape_net(pts.float()), rtol=0, atol=1e-5)
        # a deep copy owns its constants: zeroing the copy's weights leaves the original intact
        before = bs64(pts)
        dead = copy.deepcopy(bs64)
        for p in dead.parameters():
            p.zero_()
        torch.testing.assert_close(bs64(pts), before, rtol=0, atol=0)
        assert not torch.allclose(dead(pts), before)
    assert len(BLENDSHAPE_NAMES) == 52 and BLENDSHAPE_NAMES[0] == "_neutral"
    assert len(BLENDSHAPE_LANDMARKS) == 146 == len(set(BLENDSHAPE_LANDMARKS))
