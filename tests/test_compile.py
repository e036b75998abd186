"""engines/accel/compile.py: the backend fallback chain, output verification, precision probe, TensorRT cache.

Runs on a machine with no GPU and no TensorRT: the chain must skip tensorrt ('torch_tensorrt not
installed') and cuda-graph ('no CUDA device'), use torch.compile if it builds, else eager, and say so
in one line. Wrong engines are simulated with a stand-in torch_tensorrt module whose "compiled"
function computes something else: verification against eager fp32 must reject it.
Tolerances are the module's (relative L2: fp32 5e-3, fp16 2e-2, bf16 5e-2); the reference is the
module itself, so exact backends show error 0.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

import engines.accel.compile as ec
from engines.accel.compile import BACKENDS, build_engine, engine_key, flatten, relative_error

CPU = torch.device("cpu")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x, scale):
        y = torch.relu(self.conv(x)).mean((2, 3))
        return {"logits": self.head(y) * scale, "feat": y}


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import raises ImportError


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g), torch.tensor(1.5)


@pytest.mark.slow
def test_cpu_chain_without_gpu_or_tensorrt(no_tensorrt):
    """The full default chain on CPU: compile is tried for real; eager is the floor."""
    m = Tiny().eval()
    lines = []
    fn, info = build_engine(m, _inputs(), CPU, check_inputs=[_inputs(1)], name="tiny", log=lines.append)
    assert lines == [info.line()]
    assert info.backend in ("compile", "eager")
    skipped = dict(info.skipped)
    assert skipped["tensorrt"] == "torch_tensorrt not installed"
    if info.backend == "eager":  # compile failed here; the chain went on past the CUDA graph
        assert "compile" in skipped and skipped["cuda-graph"] == "no CUDA device"
    else:
        assert info.detail == "inductor" and set(skipped) == {"tensorrt"}
    assert info.line().startswith(f"engine: {info.backend} fp32 for tiny")
    assert "tensorrt: torch_tensorrt not installed" in info.line()
    x, s = _inputs(2)
    with torch.no_grad():
        want = m(x, s)
    got = fn(x, s)
    assert torch.allclose(got["logits"], want["logits"], atol=1e-5)
    assert max(info.errors.values()) <= info.tolerance


def test_eager_only_chain_is_exact(no_tensorrt):
    fn, info = build_engine(Tiny(), _inputs(), CPU, prefer=("tensorrt", "cuda-graph", "eager"), log=None)
    assert info.backend == "eager" and info.dtype == "fp32" and info.errors == {"logits": 0.0, "feat": 0.0}
    assert info.line() == ("engine: eager fp32 for model (tensorrt: torch_tensorrt not installed; "
                           "cuda-graph: no CUDA device)")


class _FakeTRT(types.ModuleType):
    """Stands in for torch_tensorrt: 'compiles' to `make(module)`, saves/loads a marker file."""

    def __init__(self, make):
        super().__init__("torch_tensorrt")
        self.__version__ = "fake-1"
        self.make, self.compiled, self.saved, self.loaded = make, 0, [], 0

    def compile(self, module, ir, arg_inputs, enabled_precisions):
        assert ir == "dynamo" and torch.float32 in enabled_precisions
        self.compiled += 1
        return self.make(module)

    def save(self, gm, path, arg_inputs):
        with open(path, "wb") as f:
            f.write(b"engine")
        self.saved.append(path)

    def load(self, path):
        self.loaded += 1
        make, module = self.make, self._last
        return types.SimpleNamespace(module=lambda: make(module))


def _fake_trt(monkeypatch, make):
    fake = _FakeTRT(make)
    orig = fake.compile

    def compile_(module, **kw):
        fake._last = module
        return orig(module, **kw)
    fake.compile = compile_
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    # let the stand-in run on CPU (real TensorRT needs CUDA)
    monkeypatch.setattr(ec, "_unavailable", lambda b, d: "no CUDA device" if b == "cuda-graph" else None)
    return fake


def test_wrong_engine_is_rejected_and_next_backend_used(monkeypatch, tmp_path):
    def wrong(module):
        return lambda x, s: {"logits": module(x, s)["logits"] * 1.1, "feat": module(x, s)["feat"]}
    _fake_trt(monkeypatch, wrong)
    fn, info = build_engine(Tiny(), _inputs(), CPU, prefer=("tensorrt", "eager"), cache_dir=tmp_path, log=None)
    assert info.backend == "eager"
    why = dict(info.skipped)["tensorrt"]
    assert why.startswith("error 1.0e-01 > 5e-03")


def test_tensorrt_engine_cached_by_key(monkeypatch, tmp_path):
    fake = _fake_trt(monkeypatch, lambda module: module)
    m = Tiny()
    _, info = build_engine(m, _inputs(), CPU, prefer=("tensorrt",), cache_dir=tmp_path, name="tiny", log=None)
    assert info.backend == "tensorrt" and info.detail == "built, cached" and fake.compiled == 1
    assert info.cache_path and info.cache_path.startswith(str(tmp_path / "tiny-"))
    _, info2 = build_engine(m, _inputs(), CPU, prefer=("tensorrt",), cache_dir=tmp_path, name="tiny", log=None)
    assert info2.detail == "cache hit" and fake.compiled == 1 and fake.loaded == 1
    assert info2.cache_path == info.cache_path
    # other shapes, precision or weights -> another engine
    x, s = _inputs()
    k = engine_key(m, (x, s), torch.float32, CPU, "fake-1")
    assert engine_key(m, (x[:1], s), torch.float32, CPU, "fake-1") != k
    assert engine_key(m, (x, s), torch.float16, CPU, "fake-1") != k
    m2 = Tiny()
    with torch.no_grad():
        m2.head.bias.add_(1e-3)
    assert engine_key(m2, (x, s), torch.float32, CPU, "fake-1") != k
    assert engine_key(Tiny(), (x, s), torch.float32, CPU, "fake-1") == k


class Overflows(nn.Module):
    """Fine in fp32, inf in fp16 (1e5 * 1e5 > 65504): the precision probe must fall back to fp32."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x * 1e5) * 1e-5


def test_precision_probe_falls_back_to_fp32(no_tensorrt):
    x = torch.randn(3, 4)
    fn, info = build_engine(Overflows(), (x,), CPU, dtype="fp16", prefer=("eager",), log=None)
    assert info.dtype == "fp32" and info.backend == "eager"
    assert dict(info.skipped)["fp16"].startswith("eager error inf > 2e-02, using fp32")
    # a module that is fine in reduced precision keeps it
    fn, info = build_engine(Tiny(), _inputs(), CPU, dtype=torch.bfloat16, prefer=("eager",), log=None)
    assert info.dtype == "bf16" and 0 < max(info.errors.values()) <= 5e-2
    assert fn(*_inputs())["logits"].dtype == torch.float32


def test_with_precision_hook_is_used():
    class Hooked(Tiny):
        def with_precision(self, dtype):
            self.asked = dtype
            return self
    m = Hooked()
    _, info = build_engine(m, _inputs(), CPU, dtype=torch.bfloat16, prefer=("eager",), log=None)
    assert m.asked == torch.bfloat16 and info.dtype == "bf16"


def test_helpers():
    assert relative_error(torch.ones(3), torch.ones(3)) == 0.0
    assert relative_error(torch.tensor([1.0, float("nan")]), torch.ones(2)) == float("inf")
    assert relative_error(torch.ones(2), torch.ones(3)) == float("inf")
    assert abs(relative_error(torch.tensor([3.0, 4.0]) * 1.01, torch.tensor([3.0, 4.0])) - 0.01) < 1e-6
    assert [n for n, _ in flatten({"a": torch.zeros(1), "b": torch.ones(1)})] == ["a", "b"]
    assert [n for n, _ in flatten((torch.zeros(1), torch.ones(1)))] == ["0", "1"]
    assert BACKENDS == ("tensorrt", "compile", "cuda-graph", "eager")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_engine_follows_its_inputs():
    m = Tiny().cuda()
    ex = tuple(t.cuda() for t in _inputs())
    fn, info = build_engine(m, ex, "cuda", prefer=("cuda-graph",), check_inputs=[tuple(t.cuda() for t in _inputs(1))],
                            log=None)
    assert info.backend == "cuda-graph"
    x, s = (t.cuda() for t in _inputs(3))
    with torch.no_grad():
        assert torch.allclose(fn(x, s)["logits"], m(x, s)["logits"], atol=1e-3)
