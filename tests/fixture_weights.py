"""Regenerate the official-code fixtures' weights from their manifest recipe (fixtures/README.md).

The recipe is independent of our model code: keys, shapes, dtypes and fill rules come from the
manifest; each float tensor is `randn(shape, Generator().manual_seed(seed_base + i)) (abs) * std + mean`
with i the key's position in sorted() order; 'keep' buffers take their listed values; integer buffers
are zero. Every tensor is checked against the manifest's sha256 (bit-exact on x86-64 torch CPU) and,
should the RNG differ in the last ulp on another ISA, against its float64 sum/sumsq (rel 1e-6).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"


@functools.lru_cache(maxsize=None)
def manifest(name: str) -> dict:
    return json.loads((FIXTURES / name / "manifest.json").read_text())


def load_npy(name: str, rel: str) -> np.ndarray:
    return np.load(FIXTURES / name / rel, allow_pickle=False)


def _fill(entry: dict, seed_base: int) -> torch.Tensor:
    shape = tuple(entry["shape"])
    if entry["dtype"] != "float32":
        return torch.zeros(shape, dtype=getattr(torch, entry["dtype"]))
    if entry["fill"] == "keep":
        return torch.tensor(entry["values"], dtype=torch.float32).reshape(shape)
    g = torch.Generator().manual_seed(seed_base + entry["index"])
    v = torch.randn(shape, generator=g, dtype=torch.float32)
    if entry["abs"]:
        v = v.abs()
    return v * entry["std"] + entry["mean"]


def _verify(key: str, v: torch.Tensor, checksum: dict) -> None:
    a = v.numpy()
    if hashlib.sha256(np.ascontiguousarray(a)).hexdigest() == checksum["sha256"]:
        return
    s, ss = float(a.astype(np.float64).sum()), float((a.astype(np.float64) ** 2).sum())
    if not (math.isclose(s, checksum["sum"], rel_tol=1e-6, abs_tol=1e-6 * max(1.0, a.size ** 0.5))
            and math.isclose(ss, checksum["sumsq"], rel_tol=1e-6)):
        raise AssertionError(f"recipe tensor {key!r} does not match the manifest checksum "
                             f"(sum {s} vs {checksum['sum']}, sumsq {ss} vs {checksum['sumsq']})")
    warnings.warn(f"{key}: sha256 differs but sum/sumsq match (RNG last-ulp difference?)")


def recipe_state_dict(name: str, verify: bool = True) -> dict[str, torch.Tensor]:
    """The fixture's state dict in the official key layout (dict ordered as in the manifest)."""
    wr = manifest(name)["weight_recipe"]
    entries = wr["keys"]
    order = sorted(e["key"] for e in entries)
    sd = {}
    for e in entries:
        assert order[e["index"]] == e["key"], f"manifest index of {e['key']} is not its sorted() position"
        v = _fill(e, wr["seed_base"])
        if verify and e["dtype"] == "float32":
            _verify(e["key"], v, e["checksum"])
        sd[e["key"]] = v
    return sd


def max_abs_diff(a, b) -> float:
    a = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    b = b.detach().cpu().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max())
