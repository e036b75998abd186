"""The DCGAN on the CPU through ONNX Runtime (engines.accel.onnx_cpu): the graph written from the weights
computes what torch's eager module computes, for the zoo's G and for tuned copies, and anything that
fails falls back to eager in one line."""
import sys

import pytest
import torch

from engines.accel import onnx_cpu
from engines.accel.onnx_cpu import OrtGenerator, cpu_generator
from engines.models.dcgan import DCGAN


@pytest.fixture(scope="module")
def g():
    return DCGAN.from_checkpoint()


def _tuned(seed):
    """A copy with every weight and BatchNorm parameter and statistic moved (what pivotal tuning changes,
    and more: the folded BatchNorm must be the copy's own)."""
    t = DCGAN.from_checkpoint()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, v in t.state_dict().items():
            if name.endswith("running_var"):
                v.mul_(torch.exp(0.1 * torch.randn(v.shape, generator=gen)))   # stays positive
            elif v.is_floating_point():
                v.add_(0.05 * v.std() * torch.randn(v.shape, generator=gen))
    return t


@pytest.mark.parametrize("batch", [1, 5])
def test_the_onnx_graph_renders_what_torch_renders(g, batch):
    z = torch.randn(batch, 100, generator=torch.Generator().manual_seed(batch))
    for model in (g, _tuned(1)):
        fast = OrtGenerator(model, threads=1)
        with torch.no_grad():
            ref = model.synthesize(z)
        out = fast.synthesize(z)
        assert out.shape == ref.shape == (batch, 3, 64, 64)
        assert (out - ref).abs().max() < 1e-5
    # the folded BatchNorm is the avatar's own: a tuned copy's graph differs from the zoo's
    assert (OrtGenerator(_tuned(2), 1).synthesize(z) - g.synthesize(z)).abs().max() > 1e-2


def test_cpu_generator_prefers_onnxruntime_and_falls_back_in_one_line(g, monkeypatch):
    assert isinstance(cpu_generator(g), OrtGenerator)
    lines = []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # not installed
    assert cpu_generator(g, log=lines.append) is g
    monkeypatch.undo()
    monkeypatch.setattr(onnx_cpu.OrtGenerator, "synthesize", lambda self, z: torch.zeros(len(z), 3, 64, 64))
    assert cpu_generator(g, log=lines.append) is g                 # a wrong engine is never used
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "onnx", None)                 # nor the package that writes the graph
    assert cpu_generator(g, log=lines.append) is g
    assert len(lines) == 3 and "onnxruntime not installed" in lines[0] and "differs" in lines[1]
    assert "onnx not installed" in lines[2]
    assert all("\n" not in line for line in lines)


def test_other_generators_stay_as_they_are():
    m = torch.nn.Conv2d(3, 3, 1)
    assert cpu_generator(m) is m
