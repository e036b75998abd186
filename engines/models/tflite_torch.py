"""Run a float TFLite graph as a differentiable torch.nn.Module.

The flatbuffer is read with the `tflite` package; constant tensors (fp16 weights behind DEQUANTIZE
ops, fp32 biases, shape/axis int tensors) are decoded once at build time into fp32 torch
parameters/buffers, so `.to(device)` and `.half()` work and gradients flow to the inputs.

Layout: TFLite is NHWC. Spatial ops (convolutions, pooling, pads, and the elementwise ops between
them) run in NCHW here, because that is what torch's kernels are fast at; every other op (reshape,
transpose, slicing, reductions) sees its tensor back in TFLite layout, so its axis arguments apply
unchanged. Which layout each tensor has is decided statically when the module is built.

Batch: the graphs are exported with batch 1; axis 0 is treated as the batch axis everywhere
(reshapes keep it, slices and shrink masks never touch it, batch-1 constants broadcast over it), so
any batch size runs. Ops outside the list in `SUPPORTED_OPS` raise NotImplementedError at build time.
"""
from __future__ import annotations

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from torch import nn

_OPNAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_NP_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
_NCHW, _TF = "nchw", "tf"

SUPPORTED_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "PRELU", "ADD", "MAX_POOL_2D", "PAD", "LOGISTIC", "RESHAPE",
    "RELU", "CONCATENATION", "MEAN", "SUB", "MUL", "SUM", "SQRT", "DIV", "STRIDED_SLICE", "TRANSPOSE",
    "NEG", "SQUARED_DIFFERENCE", "RSQRT", "DEQUANTIZE",
}


def _activation(code: int):
    """TFLite fused activation -> callable (None for identity)."""
    if code == 0:
        return None
    if code == 1:
        return F.relu
    if code == 2:
        return lambda x: x.clamp(-1.0, 1.0)
    if code == 3:
        return lambda x: x.clamp(0.0, 6.0)
    if code == 4:
        return torch.tanh
    raise NotImplementedError(f"fused activation {code}")


def _same_pad(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite/TF 'SAME': total padding so out = ceil(in/stride), the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_tf(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class _Graph:
    """The flatbuffer's first subgraph, decoded into plain Python/numpy."""

    def __init__(self, buf: bytes):
        model = tflite.Model.GetRootAsModel(buf, 0)
        g = model.Subgraphs(0)
        self.shapes, self.names, self.const = {}, {}, {}
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            self.shapes[i] = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            self.names[i] = t.Name().decode()
            data = model.Buffers(t.Buffer()).DataAsNumpy() if t.Buffer() else 0
            if isinstance(data, np.ndarray) and data.size:
                if t.Type() not in _NP_TYPES:
                    raise NotImplementedError(f"tensor type {t.Type()} ({self.names[i]})")
                arr = np.frombuffer(data.tobytes(), dtype=_NP_TYPES[t.Type()]).reshape(self.shapes[i])
                self.const[i] = arr
        self.inputs = [int(i) for i in g.InputsAsNumpy()]
        self.outputs = [int(i) for i in g.OutputsAsNumpy()]
        self.ops = []
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            oc = model.OperatorCodes(op.OpcodeIndex())
            name = _OPNAMES[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())]
            if name not in SUPPORTED_OPS:
                raise NotImplementedError(f"TFLite op {name} is not supported")
            ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(i) for i in op.OutputsAsNumpy()]
            self.ops.append((name, ins, outs, _options(name, op)))


def _options(name: str, op) -> dict:
    """The builtin options an op needs, as a dict."""
    tab = op.BuiltinOptions()

    def load(cls):
        o = cls()
        o.Init(tab.Bytes, tab.Pos)
        return o

    if tab is None:
        return {}
    if name == "CONV_2D":
        o = load(tflite.Conv2DOptions)
        return dict(pad=o.Padding(), sh=o.StrideH(), sw=o.StrideW(), dh=o.DilationHFactor(),
                    dw=o.DilationWFactor(), act=o.FusedActivationFunction())
    if name == "DEPTHWISE_CONV_2D":
        o = load(tflite.DepthwiseConv2DOptions)
        return dict(pad=o.Padding(), sh=o.StrideH(), sw=o.StrideW(), dh=o.DilationHFactor(),
                    dw=o.DilationWFactor(), act=o.FusedActivationFunction(), mult=o.DepthMultiplier())
    if name == "MAX_POOL_2D":
        o = load(tflite.Pool2DOptions)
        return dict(pad=o.Padding(), sh=o.StrideH(), sw=o.StrideW(), kh=o.FilterHeight(),
                    kw=o.FilterWidth(), act=o.FusedActivationFunction())
    if name in ("ADD", "SUB", "MUL", "DIV"):
        cls = {"ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions,
               "DIV": tflite.DivOptions}[name]
        return dict(act=load(cls).FusedActivationFunction())
    if name == "CONCATENATION":
        o = load(tflite.ConcatenationOptions)
        return dict(axis=o.Axis(), act=o.FusedActivationFunction())
    if name in ("MEAN", "SUM"):
        return dict(keep=bool(load(tflite.ReducerOptions).KeepDims()))
    if name == "STRIDED_SLICE":
        o = load(tflite.StridedSliceOptions)
        if o.EllipsisMask() or o.NewAxisMask() or o.Offset():
            raise NotImplementedError("STRIDED_SLICE with ellipsis/new-axis/offset")
        return dict(begin_mask=o.BeginMask(), end_mask=o.EndMask(), shrink=o.ShrinkAxisMask())
    return {}


class TFLiteModule(nn.Module):
    """A TFLite graph as a torch module.

    forward(*inputs) takes the graph inputs in graph order and returns the outputs in graph order
    (a tuple), in TFLite layout and with a leading batch axis. With `nchw_inputs=True`, 4-D image
    inputs are taken as [B, C, H, W] instead of [B, H, W, C]; they are then run in channels_last
    memory (set `.channels_last = False` to keep whatever memory format they come in).
    Constants become non-trainable parameters (conv/depthwise weights and biases, PReLU slopes) or
    buffers (everything else).
    """

    def __init__(self, buf: bytes, nchw_inputs: bool = False):
        super().__init__()
        g = _Graph(buf)
        self.input_ids, self.output_ids = g.inputs, g.outputs
        self.input_shapes = [g.shapes[i] for i in g.inputs]
        self.output_names = [g.names[i] for i in g.outputs]
        self._g = g
        self._layout: dict[int, str] = {}
        self._const_ids: set[int] = set(g.const)
        self._cache: dict = {}
        self.nchw_inputs = nchw_inputs
        self.channels_last = True  # run NCHW-indexed tensors with NHWC memory (see forward)
        for i in g.inputs:
            self._layout[i] = _NCHW if (nchw_inputs and len(g.shapes[i]) == 4) else _TF
        # Steps are (fn(module, env), inputs, output); they reach constants through the module they
        # are given, never a captured one, so deepcopy/.to() copies stay independent.
        self._steps = []
        for idx, (name, ins, outs, opt) in enumerate(g.ops):
            self._steps.append(self._build(idx, name, ins, outs, opt))
        del self._g, self._cache

    # ---- constants ---------------------------------------------------------------------------
    def _const(self, tid: int, kind: str = "raw", param: bool = False) -> str:
        """Register constant `tid` converted as `kind`; return the attribute name."""
        key = (tid, kind)
        if key in self._cache:
            return self._cache[key]
        arr = self._g.const[tid]
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if kind == "oihw":  # CONV_2D weight [O, H, W, I] -> [O, I, H, W]
            t = t.permute(0, 3, 1, 2)
        elif kind == "dw":  # DEPTHWISE weight [1, H, W, C*M] -> [C*M, 1, H, W]
            t = t.permute(3, 0, 1, 2)
        elif kind == "nchw":  # broadcastable NHWC constant -> NCHW
            t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape)).permute(0, 3, 1, 2)
        elif kind == "flat":
            t = t.reshape(-1)
        elif kind == "linear":  # 1x1 conv weight [O, 1, 1, I] -> [O, I]
            t = t.reshape(t.shape[0], t.shape[3])
        t = t.contiguous()
        attr = f"k{tid}_{kind}"
        if param:
            self.register_parameter(attr, nn.Parameter(t, requires_grad=False))
        else:
            self.register_buffer(attr, t)
        self._cache[key] = attr
        return attr

    def _is_const(self, tid: int) -> bool:
        return tid in self._const_ids

    def _ints(self, tid: int) -> list[int]:
        return [int(v) for v in np.asarray(self._g.const[tid]).reshape(-1)]

    # ---- op builders -------------------------------------------------------------------------
    def _build(self, idx, name, ins, outs, opt):
        g = self._g
        out = outs[0]
        if name == "DEQUANTIZE":
            if self._is_const(ins[0]):  # fp16 weight: decode once, now
                g.const[out] = g.const[ins[0]].astype(np.float32)
                self._const_ids.add(out)
                return None
            # an fp16 activation: torch keeps the module's one float dtype throughout
            self._layout[out] = self._layout[ins[0]]
            return (lambda m, env, i=ins[0]: env[i]), [ins[0]], out

        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            return self._build_conv(name, ins, out, opt)

        if name == "MAX_POOL_2D":
            x_shape = g.shapes[ins[0]]
            pads = (0, 0, 0, 0)
            if opt["pad"] == 0:  # SAME
                ph = _same_pad(x_shape[1], opt["kh"], opt["sh"], 1)
                pw = _same_pad(x_shape[2], opt["kw"], opt["sw"], 1)
                pads = (pw[0], pw[1], ph[0], ph[1])
            act = _activation(opt["act"])
            k, s = (opt["kh"], opt["kw"]), (opt["sh"], opt["sw"])

            def pool(m, x):
                if any(pads):
                    x = F.pad(x, pads, value=float("-inf"))
                y = F.max_pool2d(x, k, s)
                return act(y) if act else y
            return self._unary(ins[0], out, pool, want=_NCHW)

        if name == "PAD":
            p = np.asarray(g.const[ins[1]]).reshape(-1, 2)
            if p[0].any():
                raise NotImplementedError("PAD on the batch axis")
            if len(g.shapes[ins[0]]) == 4 and self._layout.get(ins[0]) == _NCHW:
                pads = (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1]), int(p[3, 0]), int(p[3, 1]))
                return self._unary(ins[0], out, lambda m, x: F.pad(x, pads), want=_NCHW)
            pads = tuple(int(v) for row in p[::-1] for v in row)
            return self._unary(ins[0], out, lambda m, x: F.pad(x, pads), want=_TF)

        if name == "PRELU":
            lay = self._layout[ins[0]]
            alpha_shape = g.shapes[ins[1]]
            channels = g.shapes[ins[0]][-1]
            if lay == _NCHW and int(np.prod(alpha_shape)) == channels and alpha_shape[-1] == channels:
                a = self._const(ins[1], "flat", param=True)  # per-channel: torch's fused kernel
                return self._unary(ins[0], out, lambda m, x: F.prelu(x, getattr(m, a)), want=lay)
            a = self._const(ins[1], "nchw" if lay == _NCHW else "raw", param=True)
            return self._unary(ins[0], out, lambda m, x: torch.where(x >= 0, x, x * getattr(m, a)), want=lay)

        simple = {"LOGISTIC": torch.sigmoid, "RELU": F.relu, "NEG": torch.neg, "SQRT": torch.sqrt,
                  "RSQRT": torch.rsqrt}
        if name in simple:
            return self._unary(ins[0], out, lambda m, x, f=simple[name]: f(x), want=self._layout[ins[0]])

        if name in ("ADD", "SUB", "MUL", "DIV", "SQUARED_DIFFERENCE"):
            return self._build_binary(name, ins, out, opt)

        if name == "CONCATENATION":
            return self._build_concat(ins, out, opt)

        if name in ("MEAN", "SUM"):
            axes = tuple(sorted({a % len(g.shapes[ins[0]]) for a in self._ints(ins[1])}))
            if 0 in axes:
                raise NotImplementedError(f"{name} over the batch axis")
            fn = torch.mean if name == "MEAN" else torch.sum
            keep = opt["keep"]
            return self._unary(ins[0], out, lambda m, x: fn(x, dim=axes, keepdim=keep), want=_TF)

        if name == "RESHAPE":
            shape = tuple(self._ints(ins[1])) if len(ins) > 1 and self._is_const(ins[1]) else g.shapes[out]
            rest = tuple(shape[1:])
            return self._unary(ins[0], out, lambda m, x: x.reshape((x.shape[0],) + rest), want=_TF)

        if name == "TRANSPOSE":
            perm = tuple(self._ints(ins[1]))
            if perm[0] != 0:
                raise NotImplementedError("TRANSPOSE that moves the batch axis")
            return self._unary(ins[0], out, lambda m, x: x.permute(perm), want=_TF)

        if name == "STRIDED_SLICE":
            return self._build_slice(ins, out, opt)

        raise NotImplementedError(name)

    def _fetch(self, tid: int, want: str):
        """A getter (module, env) -> tensor `tid` in layout `want` (constants read from the module)."""
        if self._is_const(tid):
            attr = self._const(tid, "nchw" if want == _NCHW else "raw")
            return lambda m, env: getattr(m, attr)
        have = self._layout[tid]
        if have == want:
            return lambda m, env: env[tid]
        conv = _to_nchw if want == _NCHW else _to_tf
        return lambda m, env: conv(env[tid])

    def _unary(self, src, out, fn, want):
        get = self._fetch(src, want)
        self._layout[out] = want
        return (lambda m, env: fn(m, get(m, env))), [src], out

    def _build_conv(self, name, ins, out, opt):
        g = self._g
        x_shape, w_shape = g.shapes[ins[0]], g.shapes[ins[1]]
        kh, kw = w_shape[1], w_shape[2]
        act = _activation(opt["act"])
        has_bias = len(ins) > 2 and ins[2] >= 0
        b = self._const(ins[2], "raw", param=True) if has_bias else None
        # 1x1 stride-1 conv on a tensor already in TFLite layout (MLP-style graphs): a matmul.
        if (name == "CONV_2D" and kh == kw == 1 and opt["sh"] == opt["sw"] == 1
                and self._layout.get(ins[0], _TF) == _TF and not self._is_const(ins[0])):
            w = self._const(ins[1], "linear", param=True)

            def linear(m, x):
                y = F.linear(x, getattr(m, w), getattr(m, b) if b else None)
                return act(y) if act else y
            return self._unary(ins[0], out, linear, want=_TF)

        stride, dil = (opt["sh"], opt["sw"]), (opt["dh"], opt["dw"])
        pad_args, pre_pad = (0, 0), None
        if opt["pad"] == 0:  # SAME
            ph = _same_pad(x_shape[1], kh, opt["sh"], opt["dh"])
            pw = _same_pad(x_shape[2], kw, opt["sw"], opt["dw"])
            if ph[0] == ph[1] and pw[0] == pw[1]:
                pad_args = (ph[0], pw[0])
            else:  # asymmetric: pad explicitly (zeros), then a VALID conv
                pre_pad = (pw[0], pw[1], ph[0], ph[1])
        if name == "CONV_2D":
            w, groups = self._const(ins[1], "oihw", param=True), 1
        else:
            channels = x_shape[3]
            if w_shape[3] != channels * opt["mult"]:
                raise NotImplementedError("depthwise weight/channel mismatch")
            w, groups = self._const(ins[1], "dw", param=True), channels

        def conv(m, x):
            if pre_pad:
                x = F.pad(x, pre_pad)
            y = F.conv2d(x, getattr(m, w), getattr(m, b) if b else None, stride, pad_args, dil, groups)
            return act(y) if act else y
        return self._unary(ins[0], out, conv, want=_NCHW)

    def _build_binary(self, name, ins, out, opt):
        g = self._g
        act = _activation(opt.get("act", 0))
        var = [i for i in ins if not self._is_const(i)]
        nchw = (any(self._layout[i] == _NCHW for i in var)
                and all(len(g.shapes[i]) <= 4 for i in ins)
                and all(len(g.shapes[i]) == 4 for i in var))
        want = _NCHW if nchw else _TF
        ga, gb = self._fetch(ins[0], want), self._fetch(ins[1], want)
        fn = {"ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul, "DIV": torch.div,
              "SQUARED_DIFFERENCE": lambda a, b: (a - b).square()}[name]
        self._layout[out] = want

        def binary(m, env):
            y = fn(ga(m, env), gb(m, env))
            return act(y) if act else y
        return binary, ins, out

    def _build_concat(self, ins, out, opt):
        g = self._g
        rank = len(g.shapes[out])
        axis = opt["axis"] % rank
        if axis == 0:
            raise NotImplementedError("CONCATENATION along the batch axis")
        var = [i for i in ins if not self._is_const(i)]
        nchw = rank == 4 and var and all(self._layout[i] == _NCHW for i in var)
        want = _NCHW if nchw else _TF
        if nchw:
            axis = {1: 2, 2: 3, 3: 1}[axis]
        getters = [self._fetch(i, want) for i in ins]
        act = _activation(opt["act"])
        self._layout[out] = want

        def concat(m, env):
            xs = [get(m, env) for get in getters]
            batch = max(x.shape[0] for x in xs)
            xs = [x.expand((batch,) + tuple(x.shape[1:])) if x.shape[0] != batch else x for x in xs]
            y = torch.cat(xs, dim=axis)
            return act(y) if act else y
        return concat, ins, out

    def _build_slice(self, ins, out, opt):
        g = self._g
        shape = g.shapes[ins[0]]
        begin, end, strides = (self._ints(i) for i in ins[1:4])
        index = [slice(None)]  # axis 0 is the batch: kept whole, never shrunk
        squeeze = []
        for ax in range(1, len(shape)):
            b = None if opt["begin_mask"] >> ax & 1 else begin[ax]
            e = None if opt["end_mask"] >> ax & 1 else end[ax]
            s = strides[ax]
            if opt["shrink"] >> ax & 1:
                b0 = begin[ax] % shape[ax]
                index.append(slice(b0, b0 + 1))
                squeeze.append(ax)
            else:
                if s < 0:
                    raise NotImplementedError("STRIDED_SLICE with negative stride")
                index.append(slice(b, e, s))
        index = tuple(index)
        squeeze = tuple(squeeze)
        return self._unary(ins[0], out, lambda m, x: x[index].squeeze(squeeze) if squeeze else x[index], want=_TF)

    # ---- run ---------------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_ids):
            raise ValueError(f"expected {len(self.input_ids)} inputs, got {len(inputs)}")
        if self.nchw_inputs and self.channels_last:
            # NHWC memory lets oneDNN/cuDNN skip reorders around every conv (4-5x faster on CPU).
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                           for x in inputs)
        env = dict(zip(self.input_ids, inputs))
        for step in self._steps:
            if step is None:
                continue
            fn, _, out = step
            env[out] = fn(self, env)
        res = []
        for i in self.output_ids:
            x = env[i]
            res.append(_to_tf(x) if self._layout[i] == _NCHW else x)
        return tuple(res)
