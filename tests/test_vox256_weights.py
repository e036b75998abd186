"""The vox256 weights registry, `python -m engines.weights status`, and one-line errors for bad files.

Bad input must give a UserError (one line) that says which file and what to do: missing -> the file
name and where to get it; wrong kind/shape -> the expected layout; NVlabs pickles -> refused with the
conversion route (never unpickled); corrupt/truncated files and files holding code -> refused.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.core.errors import UserError
from engines.models.stylegan2 import StyleGAN2
from engines.weights import cli
from engines.weights import files as weights
from engines.weights.random_weights import random_stylegan2, write_random_vox256

REPO = Path(__file__).resolve().parents[1]


class NotATensor:  # a class torch's weights-only unpickler must refuse
    pass


@pytest.fixture(scope="module")
def partial_dir(tmp_path_factory):
    """Random 64 px generator, A matrix, DECA and ranges; no e4e (kept out to stay fast)."""
    d = tmp_path_factory.mktemp("vox")
    write_random_vox256(d, size=64, include=("generator", "directions", "deca", "ranges"))
    return d


@pytest.fixture(scope="module")
def g64():
    sd, avg = random_stylegan2(64, seed=1)
    return sd, avg


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_registry_is_complete():
    names = {"generator", "e4e", "directions", "deca", "ranges", "arcface", "lpips_lin", "alexnet"}
    assert set(weights.VOX256) == names
    files = [w.filename for w in weights.VOX256.values()]
    assert len(set(files)) == len(files)
    for w in weights.VOX256.values():
        assert w.layout and w.source and w.licence and w.role in ("inference", "training")


def test_missing_file_says_which_and_where(tmp_path):
    with pytest.raises(UserError) as e:
        weights.weight_path(tmp_path, "e4e")
    msg = one_line(e)
    assert "missing e4e-voxceleb.pt" in msg and "get it from" in msg and "StelaBou" in msg
    with pytest.raises(UserError, match="needs a weights folder.*deca_model.tar"):
        weights.weight_path(None, "deca")
    with pytest.raises(UserError, match="not found"):
        StyleGAN2.from_checkpoint(tmp_path / "nope.pt")


def test_wrong_kind_and_shape_name_the_layout(partial_dir, g64, tmp_path):
    sd, _ = g64
    torch.save({"e": {}}, tmp_path / "e.pt")
    with pytest.raises(UserError) as e:
        StyleGAN2.from_checkpoint(tmp_path / "e.pt")
    assert "no 'g_ema'" in one_line(e) and "e4e" in str(e.value)
    bad = dict(sd)
    bad["convs.3.conv.weight"] = torch.zeros(1, 512, 256, 3, 3)
    torch.save({"g_ema": bad}, tmp_path / "g.pt")
    with pytest.raises(UserError) as e:
        StyleGAN2.from_checkpoint(tmp_path / "g.pt")
    msg = one_line(e)
    assert "rosinality StyleGAN2 .pt" in msg and "'convs.3.conv.weight' (1, 512, 256, 3, 3)" in msg
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="should be a dict"):
        StyleGAN2.from_checkpoint(tmp_path / "list.pt")
    # a generator passed where DECA belongs
    with pytest.raises(UserError, match="no 'E_flame'"):
        weights.VOX256["deca"].check(partial_dir / "stylegan-voxceleb.pt")


def test_nvlabs_pickles_refused_with_conversion_route(tmp_path):
    (tmp_path / "network-snapshot.pkl").write_bytes(b"\x80\x04anything")
    with pytest.raises(UserError) as e:
        StyleGAN2.from_checkpoint(tmp_path / "network-snapshot.pkl")
    assert "refused" in one_line(e) and "rosinality" in str(e.value) and "docs/weights.md" in str(e.value)
    # an NVlabs pickle renamed to .pt is recognised by content and never unpickled
    raw = b"\x80\x03ctorch_utils.persistence\n_reconstruct_persistent_obj\nq\x00}q\x01\x85q\x02Rq\x03."
    (tmp_path / "renamed.pt").write_bytes(raw)
    with pytest.raises(UserError, match="NVlabs StyleGAN pickle.*refused.*convert"):
        StyleGAN2.from_checkpoint(tmp_path / "renamed.pt")


def test_corrupt_truncated_and_code_bearing_files(g64, tmp_path):
    sd, _ = g64
    good = tmp_path / "g.pt"
    torch.save({"g_ema": sd}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        StyleGAN2.from_checkpoint(tmp_path / "trunc.pt")
    assert "corrupt or truncated" in one_line(e)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(UserError) as e:
        StyleGAN2.from_checkpoint(tmp_path / "junk.pt")
    assert "junk.pt" in one_line(e)
    torch.save({"g_ema": sd, "extra": NotATensor()}, tmp_path / "code.pt")
    with pytest.raises(UserError, match=r"other than tensors \(tests.test_vox256_weights.NotATensor\); refused"):
        StyleGAN2.from_checkpoint(tmp_path / "code.pt")
    with open(tmp_path / "plain.pkl.pt", "wb") as f:  # a plain pickle of a class: weights-only refuses
        pickle.dump({"g_ema": NotATensor()}, f, protocol=2)
    with pytest.raises(UserError) as e:
        StyleGAN2.from_checkpoint(tmp_path / "plain.pkl.pt")
    assert "refused" in one_line(e)


def test_status_cli_reports_each_file(partial_dir, capsys):
    rc = cli.main(["status", "--dir", str(partial_dir)])
    out = capsys.readouterr().out
    assert rc == 1 and "not ready" in out
    lines = {ln.split()[1]: ln.split()[0] for ln in out.splitlines()[1:-1]}
    assert lines["stylegan-voxceleb.pt"] == "present" and lines["A_matrix.pt"] == "present"
    assert lines["e4e-voxceleb.pt"] == "missing" and lines["model_ir_se50.pth"] == "missing"
    assert "64 px" in out and "get it from" in out
    rc = cli.main(["status", "--dir", str(partial_dir), "--inference-only"])
    assert "model_ir_se50.pth" not in capsys.readouterr().out


def test_status_flags_invalid_and_inconsistent_files(partial_dir, tmp_path, capsys):
    d = tmp_path / "w"
    d.mkdir()
    for name in ("stylegan-voxceleb.pt", "deca_model.tar", "ranges_voxceleb.npy"):
        (d / name).symlink_to(partial_dir / name)
    (d / "e4e-voxceleb.pt").write_bytes(b"PK\x03\x04 truncated zip")
    a = torch.load(partial_dir / "A_matrix.pt", weights_only=True)
    a["num_layers_shift"] = 12
    a["A_matrix"] = {"linear.weight": torch.zeros(12 * 512, 15), "linear.bias": torch.zeros(12 * 512)}
    torch.save(a, d / "A_matrix.pt")
    rows = {s.file.name: s for s in weights.status(d, roles=("inference",))}
    assert rows["e4e"].state == "invalid" and "corrupt or truncated" in rows["e4e"].detail
    assert rows["directions"].state == "present" and rows["directions"].rows == 12
    issues = weights.consistency(list(rows.values()))
    assert issues and "12 W+ rows" in issues[0] and "10 layers" in issues[0]


def test_module_entry_point_exit_codes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "engines.weights", "status", "--dir", str(tmp_path / "none")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "weights folder not found" in r.stderr and "Traceback" not in r.stderr
