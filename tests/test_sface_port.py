"""SFace torch port (engines/models/sface.py) against onnxruntime running the original ONNX file, on real
faces aligned with MediaPipe landmarks; plus identity sanity checks and gradients.

Tolerances (measured on this CPU on the bundled and shared faces):
- embeddings: max |port - ort| <= 2e-4. Measured <= 8e-6 (entries up to ~4): fp32 summation order only
  (ORT fuses BN into conv and uses its own kernels; we fold BN in float64). For scale: a 1% error in a
  single conv's weights moves the embedding by 3e-2, BGR instead of RGB input by 0.8, so 2e-4 leaves
  25x headroom over the noise and still catches any real porting error by two orders of magnitude.
- cosine(port, ort) >= 1 - 1e-6 (measured 1 - 1.2e-7 at worst).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.core.modelfiles import model_path
from engines.method.face_align import align_112, align_112_np, five_points_from_mediapipe, to_tensor
from engines.models.sface import SFace, cosine, dequantize_linear
from tests.mediapipe_faces import ASSETS, detect_landmarks, load_rgb, video_frames

MAX_ABS_TOL = 2e-4
COS_TOL = 1e-6
SAME_PERSON_MIN = 0.363  # OpenCV zoo's published SFace cosine threshold


def _aligned(images, num_faces=1):
    """Aligned uint8 112x112 faces, one list per image (faces left to right)."""
    out = []
    for img, faces in zip(images, detect_landmarks(images, num_faces=num_faces)):
        assert faces, "MediaPipe found no face"
        out.append([align_112_np(img, five_points_from_mediapipe(f, (img.shape[1], img.shape[0])))
                    for f in faces])
    return out


@pytest.fixture(scope="module")
def sface():
    return SFace.from_onnx()


@pytest.fixture(scope="module")
def ort_embed():
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the file lists initializers as inputs: ORT warns once per tensor
    sess = ort.InferenceSession(str(model_path("sface")), so, providers=["CPUExecutionProvider"])
    # The file also declares its pre-quantisation weights as graph inputs; they feed no node, but ORT
    # insists on a value, so give zeros (the test below proves they are unused).
    dummies = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs() if i.name != "data"}

    def run(faces01: torch.Tensor) -> np.ndarray:
        # the ONNX model's own convention: RGB, 0..255 (OpenCV blobFromImage(..., swapRB=true));
        # fixed batch 1
        x = (faces01.double() * 255).float().numpy()
        return np.concatenate([sess.run(None, {**dummies, "data": x[i:i + 1]})[0] for i in range(len(x))])
    return run


@pytest.fixture(scope="module")
def core_faces():
    """Bundled assets: astronaut, its mirror image (same person), three frames of the Pexels woman."""
    astro = load_rgb(ASSETS / "astronaut.png")
    frames = video_frames(ASSETS / "pexels_woman.mp4")
    faces = [f[0] for f in _aligned([astro, astro[:, ::-1].copy(), *frames])]
    return {"astro": faces[0], "astro_flip": faces[1], **{f"woman{i}": f for i, f in enumerate(faces[2:])}}


@pytest.fixture(scope="module")
def shared_faces(shared_dir):
    media = shared_dir / "media"
    names = ["portrait_obama.jpg", "twofaces_obama_biden.jpg", "portrait_pyfeat_single_face.jpg",
             "portrait_einstein_bw.jpg", "portrait_mona_lisa.jpg"]
    if not all((media / n).is_file() for n in names):
        pytest.skip("shared media portraits missing")
    al = _aligned([load_rgb(media / n) for n in names], num_faces=2)
    assert len(al[1]) == 2, "expected Obama and Biden in twofaces_obama_biden.jpg"
    return {"obama": al[0][0], "obama2": al[1][0], "biden": al[1][1], "pyfeat": al[2][0],
            "einstein": al[3][0], "monalisa": al[4][0]}


def _compare(sface, ort_embed, faces: dict):
    x = to_tensor(np.stack(list(faces.values())))
    with torch.no_grad():
        port = sface(x)  # one batched call (ORT runs them one by one)
    ref = torch.from_numpy(ort_embed(x))
    diff = (port - ref).abs().max().item()
    cos = cosine(port, ref).min().item()
    print(f"\n{len(x)} faces: max|port-ort| = {diff:.2e} (|emb| max {ref.abs().max():.2f}), "
          f"min cos = 1 - {1 - cos:.1e}")
    assert port.shape == (len(x), 128)
    assert diff <= MAX_ABS_TOL
    assert cos >= 1 - COS_TOL
    return port


def test_dequantize_matches_onnx_reference_evaluator():
    """Our numpy DequantizeLinear (blocked, per axis) == onnx's own reference implementation, bit for bit."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(model_path("sface")))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    picked = [n for n in nodes if n.output[0].startswith(("conv_1_", "conv_13_conv2d", "conv_13_dw", "pre_fc1"))]
    assert len(picked) == 5  # conv_1 (block 27), conv_13 pw (64) + dw (9), fc weight (64) and bias (axis 0)
    for node in picked:
        graph = onnx.helper.make_graph(
            [node], "dq", [], [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(inits[n], n) for n in node.input])
        ref = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=model.opset_import)).run(None, {})[0]
        a = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ours = dequantize_linear(*(inits[n] for n in node.input), a.get("axis", 1), a.get("block_size", 0))
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref, err_msg=node.output[0])


@pytest.mark.parametrize("fuse", [True, False])
def test_port_matches_onnxruntime_on_bundled_faces(fuse, sface, ort_embed, core_faces):
    _compare(sface if fuse else SFace.from_onnx(fuse=False), ort_embed, core_faces)


def test_port_matches_onnxruntime_on_shared_portraits(sface, ort_embed, shared_faces):
    _compare(sface, ort_embed, shared_faces)


def test_same_person_beats_different_person_bundled(sface, core_faces):
    with torch.no_grad():
        e = dict(zip(core_faces, sface(to_tensor(np.stack(list(core_faces.values()))))))
    women = [k for k in e if k.startswith("woman")]
    same = [cosine(e["astro"], e["astro_flip"])] + [cosine(e[a], e[b]) for i, a in enumerate(women)
                                                    for b in women[i + 1:]]
    diff = [cosine(e[a], e[w]) for a in ("astro", "astro_flip") for w in women]
    same, diff = torch.stack(same), torch.stack(diff)
    print(f"\nsame-person cos {same.numpy().round(3)}, different-person cos {diff.numpy().round(3)}")
    assert same.min() > SAME_PERSON_MIN > diff.max()
    assert same.min() - diff.max() > 0.3


def test_same_person_beats_different_person_obama(sface, shared_faces):
    with torch.no_grad():
        e = dict(zip(shared_faces, sface(to_tensor(np.stack(list(shared_faces.values()))))))
    same = cosine(e["obama"], e["obama2"]).item()
    others = [cosine(e[a], e[b]).item() for a in ("obama", "obama2")
              for b in ("biden", "pyfeat", "einstein", "monalisa")]
    print(f"\nObama portrait vs Obama in two-faces photo: {same:.3f}; vs other people: max {max(others):.3f}")
    assert same > SAME_PERSON_MIN > max(others)
    assert same - max(others) > 0.3


def test_batch_and_dtype_consistency(sface, core_faces):
    x = to_tensor(np.stack(list(core_faces.values())))
    with torch.no_grad():
        batched = sface(x)
        single = torch.cat([sface(x[i:i + 1]) for i in range(len(x))])
        as_double = SFace.from_onnx().double()(x.double())
        as_half = SFace.from_onnx().half()(x.half())
    assert (batched - single).abs().max() < 1e-4
    assert (batched.double() - as_double).abs().max() < 1e-4  # fp32 port vs fp64 evaluation
    assert as_half.dtype == torch.float16
    assert cosine(batched, as_half.float()).min() > 0.999


def test_gradients_reach_the_input_image(sface, core_faces):
    """Identity loss through SFace and through the differentiable alignment warp."""
    astro = load_rgb(ASSETS / "astronaut.png")
    pts = five_points_from_mediapipe(detect_landmarks([astro])[0][0], (astro.shape[1], astro.shape[0]))
    image = to_tensor(astro).requires_grad_(True)
    target = sface(to_tensor(core_faces["woman0"])).detach()
    emb = sface(align_112(image, torch.from_numpy(pts)[None].float()))
    loss = 1 - cosine(emb, target).mean()
    loss.backward()
    g = image.grad
    assert torch.isfinite(g).all()
    assert g.abs().sum() > 0
    # gradient lives on the face only: pixels far outside the aligned crop get none
    assert g[..., :10, :10].abs().max() == 0 and g[..., 100:200, 200:300].abs().max() > 0
    # first-order check of the gradient along its own direction
    with torch.no_grad():
        step = 1e-3 * g / g.norm()
        emb2 = sface(align_112(image - step, torch.from_numpy(pts)[None].float()))
        drop = (loss - (1 - cosine(emb2, target).mean())).item()
    assert drop == pytest.approx((g * step).sum().item(), rel=0.2)


def test_bad_model_file_is_a_user_error(tmp_path):
    from engines.core.errors import UserError

    with pytest.raises(UserError, match="not found"):
        SFace.from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(UserError):
        SFace.from_onnx(junk)
