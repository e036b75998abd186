"""Turn a module into the fastest engine that still computes the same function, with a fallback chain.

    fn, info = build_engine(module, example_inputs, device, dtype=torch.float16)
    print(info.line())   # e.g. "engine: cuda-graph fp16 (tensorrt: torch_tensorrt not installed)"

Backends, tried in `prefer` order (default BACKENDS), the first one that builds AND verifies wins:
  * tensorrt   - torch-tensorrt (dynamo IR), only when it imports and the device is CUDA; engines are
                 cached on disk under a key of GPU name, input shapes/dtypes, precision, versions and
                 a hash of the weights (a rebuild takes minutes, a cache hit seconds);
  * compile    - torch.compile (inductor); on CUDA the compiled function is then captured in a CUDA
                 graph too (launch overhead dominates at batch 1), falling back to plain compiled;
  * cuda-graph - capture the eager module once into a CUDA graph and replay it;
  * eager      - the module itself.
Shapes are static: build one engine per input shape (batch size).

Verification: every candidate's outputs are compared with the eager fp32 module's (computed with TF32
off) on `check_inputs`, by relative L2 error ||out - ref|| / ||ref|| per output tensor; a candidate
whose error exceeds the tolerance of its precision (TOLERANCE, or `tolerance=`) or that is not finite
is rejected and the next one tried. A reduced precision (fp16/bf16) is first probed in eager mode:
if the module itself is not accurate enough at that precision, every backend runs fp32 instead.
Modules with precision-sensitive parts can define `with_precision(dtype) -> module` (used instead of
`module.to(dtype)`), e.g. StyleGAN2 running fp16 only in its top-resolution blocks.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

BACKENDS = ("tensorrt", "compile", "cuda-graph", "eager")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
# Relative L2 error allowed against eager fp32. fp32 leaves room for TF32 convolutions (10-bit
# mantissa, ~3e-4 per layer) through deep nets; fp16 (10-bit mantissa, but fp16 activations and
# storage everywhere) and bf16 (7-bit) get the usual end-to-end budgets for 50-100 layer networks.
TOLERANCE = {torch.float32: 5e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass
class EngineInfo:
    backend: str                  # 'tensorrt' | 'compile' | 'cuda-graph' | 'eager'
    dtype: str                    # 'fp32' | 'fp16' | 'bf16'
    device: str
    name: str = "model"
    detail: str = ""              # e.g. 'inductor + cuda graph', 'cache hit'
    errors: dict[str, float] = field(default_factory=dict)  # per output, relative L2 vs eager fp32
    tolerance: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (candidate, why not)
    build_s: float = 0.0
    cache_path: str | None = None
    candidates: list[dict] = field(default_factory=list)  # every try: backend, dtype, errors or reason

    def line(self) -> str:
        why = "; ".join(f"{what}: {reason}" for what, reason in self.skipped)
        extra = f", {self.detail}" if self.detail else ""
        return f"engine: {self.backend} {self.dtype} for {self.name}{extra}" + (f" ({why})" if why else "")

    def to_json(self) -> dict:
        return {"backend": self.backend, "dtype": self.dtype, "device": self.device, "name": self.name,
                "detail": self.detail, "errors": self.errors, "tolerance": self.tolerance,
                "skipped": [list(s) for s in self.skipped], "build_s": round(self.build_s, 3),
                "cache_path": self.cache_path, "candidates": self.candidates, "line": self.line()}


# -- output trees -------------------------------------------------------------------------------------
def flatten(out) -> list[tuple[str, torch.Tensor]]:
    """Tensor, tuple/list or dict of tensors -> [(name, tensor)] in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [("out", out)]
    if isinstance(out, dict):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    raise TypeError(f"engine outputs must be tensors, tuples/lists or dicts of tensors, not {type(out).__name__}")


def map_tensors(out, fn):
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, dict):
        return {k: map_tensors(v, fn) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(map_tensors(v, fn) for v in out)
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when shapes differ or anything is not finite."""
    if out.shape != ref.shape:
        return float("inf")
    a, b = out.detach().double(), ref.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


@contextlib.contextmanager
def exact_fp32():
    """Full-precision fp32 matmuls and convolutions (no TF32) for reference outputs."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32 = cudnn
            torch.backends.cuda.matmul.allow_tf32 = matmul


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- precision ----------------------------------------------------------------------------------------
class _CastWrapper(nn.Module):
    """Run `module` (already converted to `dtype`) on floating inputs cast to dtype; outputs back to fp32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, *inputs):
        inputs = [x.to(self.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
        out = self.module(*inputs)
        return map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)


def reduced_precision(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The module at `dtype`: its own `with_precision` if it has one, else a converted copy."""
    if dtype == torch.float32:
        return module
    if hasattr(module, "with_precision"):
        return module.with_precision(dtype)
    return _CastWrapper(copy.deepcopy(module).to(dtype), dtype).eval()


# -- backends -----------------------------------------------------------------------------------------
class CudaGraphEngine:
    """Replays one captured CUDA graph: inputs are copied into static buffers, outputs are the graph's
    static tensors (cloned unless copy_outputs=False, in which case the next call overwrites them)."""

    def __init__(self, fn: Callable, example_inputs: Sequence, warmup: int = 3, copy_outputs: bool = True):
        self.copy_outputs = copy_outputs
        self.static_inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):  # lazy init (cuDNN plans, workspaces, autotuning) outside the capture
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the engine's stages capture in their own worker threads while session threads
        # keep moving frames and running the detector; only this thread's unsafe calls break its capture
        with torch.no_grad(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_outputs = fn(*self.static_inputs)

    def __call__(self, *inputs):
        for dst, src in zip(self.static_inputs, inputs):
            if isinstance(dst, torch.Tensor):
                if src.shape != dst.shape:
                    raise ValueError(f"CUDA graph built for input shape {tuple(dst.shape)}, got {tuple(src.shape)}")
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        if self.copy_outputs:
            return map_tensors(self.static_outputs, lambda t: t.clone())
        return self.static_outputs


def _no_grad(fn):
    def run(*args):
        with torch.no_grad():
            return fn(*args)
    return run


def _tensorrt_import():
    try:
        import torch_tensorrt  # noqa: F401  (optional dependency)
        return torch_tensorrt, None
    except ImportError:
        return None, "torch_tensorrt not installed"
    except Exception as e:  # a broken install (missing TensorRT libraries, ABI mismatch)
        return None, f"torch_tensorrt failed to import ({type(e).__name__}: {str(e)[:80]})"


def weights_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().contiguous().cpu()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def engine_key(module: nn.Module, example_inputs: Sequence, dtype: torch.dtype, device: torch.device,
               backend_version: str = "") -> str:
    """Cache key: GPU name, input shapes and dtypes, precision, software versions, weight hash."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    spec = {"gpu": gpu, "torch": torch.__version__, "backend": backend_version, "dtype": DTYPE_NAMES[dtype],
            "class": type(module).__qualname__,
            "inputs": [[list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else repr(x)
                       for x in example_inputs],
            "weights": weights_hash(module)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACEREENACT_ENGINE_CACHE", Path.home() / ".cache" / "facereenact" / "engines"))


def _build_tensorrt(module, inputs, dtype, device, name, cache_dir):
    trt, why = _tensorrt_import()
    if trt is None:
        raise _Unavailable(why)
    version = getattr(trt, "__version__", "?")
    path = Path(cache_dir) / f"{name}-{engine_key(module, inputs, dtype, device, version)}.ep"
    if path.is_file():
        try:
            loaded = trt.load(str(path))
            fn = loaded.module() if hasattr(loaded, "module") else loaded
            return _no_grad(fn), "cache hit", str(path)
        except Exception as e:  # stale/corrupt cache: rebuild below
            warnings.warn(f"TensorRT engine cache {path} unusable ({type(e).__name__}); rebuilding")
    precisions = {dtype, torch.float32}
    args = list(inputs)
    try:
        gm = trt.compile(module, ir="dynamo", arg_inputs=args, enabled_precisions=precisions)
    except TypeError:  # older torch-tensorrt: `inputs=` instead of `arg_inputs=`
        gm = trt.compile(module, ir="dynamo", inputs=args, enabled_precisions=precisions)
    detail = "built"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            trt.save(gm, str(path), arg_inputs=args)
        except TypeError:
            trt.save(gm, str(path), inputs=args)
        detail = "built, cached"
    except Exception as e:
        warnings.warn(f"could not cache the TensorRT engine at {path} ({type(e).__name__}: {str(e)[:80]})")
        path = None
    return _no_grad(gm), detail, (str(path) if path else None)


def _build_compile(module, inputs, dtype, device, name, cache_dir, copy_outputs=True):
    compiled = torch.compile(module, dynamic=False)
    fn = _no_grad(compiled)
    fn(*inputs)  # compile now, so failures surface here
    if device.type != "cuda":
        return fn, "inductor", None
    try:
        return CudaGraphEngine(fn, inputs, copy_outputs=copy_outputs), "inductor + cuda graph", None
    except Exception as e:
        return fn, f"inductor (graph capture failed: {type(e).__name__})", None


def _build_cuda_graph(module, inputs, dtype, device, name, cache_dir, copy_outputs=True):
    return CudaGraphEngine(_no_grad(module), inputs, copy_outputs=copy_outputs), "", None


def _build_eager(module, inputs, dtype, device, name, cache_dir):
    return _no_grad(module), "", None


class _Unavailable(Exception):
    pass


def _unavailable(backend: str, device: torch.device) -> str | None:
    if backend == "tensorrt":
        if device.type != "cuda":
            return "needs CUDA" if _tensorrt_import()[0] is not None else _tensorrt_import()[1]
        return _tensorrt_import()[1]
    if backend == "cuda-graph" and device.type != "cuda":
        return "no CUDA device"
    if backend not in BACKENDS:
        return "unknown backend"
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:100] if s else ''}".rstrip(": ")


# -- the chain ----------------------------------------------------------------------------------------
def build_engine(module: nn.Module, example_inputs: Sequence, device: str | torch.device | None = None,
                 dtype: torch.dtype | str = torch.float32, prefer: Sequence[str] | None = None,
                 tolerance: float | None = None, check_inputs: Sequence[Sequence] | None = None,
                 name: str = "model", cache_dir: str | Path | None = None,
                 log: Callable[[str], Any] | None = print, copy_outputs: bool = True):
    """-> (callable, EngineInfo). See the module doc. `example_inputs` fix the shapes (and are the
    capture inputs); `check_inputs` (default: [example_inputs]) are what outputs are verified on —
    pass inputs other than the example ones to catch engines that ignore their inputs."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype}")
    example_inputs = tuple(example_inputs)
    if device is None:
        device = next((x.device for x in example_inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    prefer = tuple(prefer or BACKENDS)
    checks = [tuple(c) for c in (check_inputs or [example_inputs])]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    module = module.eval()
    t0 = time.perf_counter()

    with torch.no_grad(), exact_fp32():
        refs = [flatten(module(*c)) for c in checks]
    _sync(device)

    def errors_of(fn) -> dict[str, float]:
        errs: dict[str, float] = {}
        with torch.no_grad():
            for c, ref in zip(checks, refs):
                out = flatten(fn(*c))
                if [n for n, _ in out] != [n for n, _ in ref]:
                    return {"structure": float("inf")}
                for (n, o), (_, r) in zip(out, ref):
                    errs[n] = max(errs.get(n, 0.0), relative_error(o, r))
        _sync(device)
        return errs

    skipped: list[tuple[str, str]] = []
    candidates: list[dict] = []
    run_dtype, run_module = dtype, module
    if dtype != torch.float32:
        tol = tolerance if tolerance is not None else TOLERANCE[dtype]
        try:
            reduced = reduced_precision(module, dtype)
            errs = errors_of(_no_grad(reduced))
            worst = max(errs.values(), default=0.0)
            candidates.append({"backend": "eager (precision probe)", "dtype": DTYPE_NAMES[dtype], "errors": errs,
                               "accepted": worst <= tol})
            if worst <= tol:
                run_module = reduced
            else:
                skipped.append((DTYPE_NAMES[dtype], f"eager error {worst:.1e} > {tol:.0e}, using fp32"))
                run_dtype = torch.float32
        except Exception as e:
            skipped.append((DTYPE_NAMES[dtype], f"{_first_line(e)}; using fp32"))
            candidates.append({"backend": "eager (precision probe)", "dtype": DTYPE_NAMES[dtype],
                               "reason": _first_line(e), "accepted": False})
            run_dtype = torch.float32
    tol = tolerance if tolerance is not None and run_dtype == dtype else TOLERANCE[run_dtype]

    builders = {"tensorrt": lambda: _build_tensorrt(run_module, example_inputs, run_dtype, device, name, cache_dir),
                "compile": lambda: _build_compile(run_module, example_inputs, run_dtype, device, name, cache_dir,
                                                  copy_outputs),
                "cuda-graph": lambda: _build_cuda_graph(run_module, example_inputs, run_dtype, device, name,
                                                        cache_dir, copy_outputs),
                "eager": lambda: _build_eager(run_module, example_inputs, run_dtype, device, name, cache_dir)}
    chosen = None
    dname = DTYPE_NAMES[run_dtype]
    for backend in prefer:
        why = _unavailable(backend, device)
        if why:
            skipped.append((backend, why))
            candidates.append({"backend": backend, "dtype": dname, "reason": why, "accepted": False})
            continue
        try:
            fn, detail, cache_path = builders[backend]()
            errs = errors_of(fn)
        except Exception as e:
            why = str(e) if isinstance(e, _Unavailable) else _first_line(e)
            skipped.append((backend, why))
            candidates.append({"backend": backend, "dtype": dname, "reason": why, "accepted": False})
            continue
        worst = max(errs.values(), default=0.0)
        candidates.append({"backend": backend, "dtype": dname, "errors": errs, "accepted": worst <= tol})
        if worst <= tol:
            chosen = (backend, fn, detail, cache_path, errs)
            break
        skipped.append((backend, f"error {worst:.1e} > {tol:.0e}"))
    if chosen is None:  # nothing verified: the module itself, fp32, is the reference by definition
        run_dtype, tol = torch.float32, TOLERANCE[torch.float32]
        chosen = ("eager", _no_grad(module), "last resort", None, {n: 0.0 for n, _ in refs[0]})
    backend, fn, detail, cache_path, errs = chosen
    info = EngineInfo(backend, DTYPE_NAMES[run_dtype], str(device), name, detail, errs, tol, skipped,
                      time.perf_counter() - t0, cache_path, candidates)
    if log:
        log(info.line())
    return fn, info
