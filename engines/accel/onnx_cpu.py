"""The default zoo's generator on the CPU through ONNX Runtime: the same function, 2.5x faster.

One 64x64 DCGAN frame on one core of the 2-vCPU AMD EPYC VM: torch eager (channels-last, mkldnn's
transposed convolutions) 5.0 ms, ONNX Runtime 2.0 ms, equal to 1e-6 (scripts/bench_generator_cpu.py).
The graph is written here from the weights (BatchNorm folded into each transposed convolution's weight and
bias, as its eval-mode statistics allow) rather than traced by torch's exporter, so it depends only on the
onnx package's schema. Each avatar's tuned G gets its own session; it is checked against the eager module
before it is used, and anything that fails (no onnxruntime, a build error, a mismatch) keeps the eager
module with a one-line notice.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engines.accel.compile import relative_error
from engines.models.dcgan import DCGAN

OPSET = 17
IR_VERSION = 8          # readable by every onnxruntime >= 1.14
TOLERANCE = 1e-4        # relative L2 against eager fp32 (measured: ~1e-6)


def dcgan_graph(g: DCGAN) -> bytes:
    """The serialised ONNX model of g.synthesize: z [B, 100] -> image [B, 3, 64, 64]."""
    import onnx
    from onnx import helper, numpy_helper

    layers = list(g.main)
    nodes = [helper.make_node("Unsqueeze", ["z", "axes"], ["x0"])]
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    x, n = "x0", 0
    for i, m in enumerate(layers):
        if not isinstance(m, nn.ConvTranspose2d):
            continue
        w, b = _folded(m, layers[i + 1] if i + 1 < len(layers) else None)
        n += 1
        inits += [numpy_helper.from_array(w, f"w{n}"), numpy_helper.from_array(b, f"b{n}")]
        nodes.append(helper.make_node("ConvTranspose", [x, f"w{n}", f"b{n}"], [f"c{n}"], kernel_shape=list(m.kernel_size),
                                      strides=list(m.stride), pads=[*m.padding, *m.padding]))
        act = "Relu" if n < 5 else "Tanh"
        x = f"a{n}" if n < 5 else "image"
        nodes.append(helper.make_node(act, [f"c{n}"], [x]))
    graph = helper.make_graph(
        nodes, "dcgan", [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["batch", 100])],
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 64, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _folded(conv: nn.ConvTranspose2d, after: nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """The transposed convolution's weight [in, out, k, k] and bias with a following eval BatchNorm folded in."""
    w = conv.weight.detach().float()
    if not isinstance(after, nn.BatchNorm2d):
        return w.contiguous().numpy(), np.zeros(w.shape[1], np.float32)
    scale = after.weight.detach() / torch.sqrt(after.running_var + after.eps)
    bias = after.bias.detach() - after.running_mean * scale
    return (w * scale.view(1, -1, 1, 1)).contiguous().numpy(), bias.float().numpy()


class OrtGenerator:
    """g.synthesize through one ONNX Runtime session (CPU): latent tensor in, image tensor out."""

    def __init__(self, g: DCGAN, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # several sessions share few cores: a pool that spins between calls would take their time
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(dcgan_graph(g), opts, providers=["CPUExecutionProvider"])
        self.latent_shape, self.resolution = g.latent_shape, g.resolution

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        z = latent.detach().float().reshape(latent.shape[0], -1).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"z": z})[0])

    __call__ = synthesize

    def to(self, device) -> OrtGenerator:
        if torch.device(device).type != "cpu":
            raise ValueError("OrtGenerator runs on the CPU only")
        return self


def cpu_generator(g: nn.Module, threads: int | None = None, log=print):
    """The fastest verified per-frame form of a generator on the CPU: an ONNX Runtime session for the
    DCGAN, else (another generator, or any failure, with one line saying why) the module itself."""
    if not isinstance(g, DCGAN):
        return g
    try:
        fast = OrtGenerator(g, threads or 1)
    except ImportError as e:   # onnxruntime, or the onnx package that writes the graph
        log(f"generator: {e.name or 'onnxruntime'} not installed, running torch eager on the CPU")
        return g
    except Exception as e:    # an onnx/onnxruntime that cannot build this graph
        log(f"generator: onnxruntime failed ({type(e).__name__}: {str(e)[:80]}), running torch eager on the CPU")
        return g
    z = g.sample_latents(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = relative_error(fast.synthesize(z), g.synthesize(z))
    if not err <= TOLERANCE:
        log(f"generator: onnxruntime differs from torch (relative error {err:.1e}), running torch eager")
        return g
    return fast
