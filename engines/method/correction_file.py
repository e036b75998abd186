"""A measured Correction in one safetensors file, so that a pack's next process reads it back instead of
rendering and reading its sweeps again (streamer.reenact.correction_cache decides where and when).

The structure travels as JSON in the file's metadata and every array or tensor as a tensor. Only the
correction's own dataclasses (CLASSES) are rebuilt from it; nothing is unpickled.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engines.method.correction import Correction, JawDrift, JawFar, JawPitch

FORMAT = "facereenact-correction/1"
CLASSES = {c.__name__: c for c in (Correction, JawFar, JawPitch, JawDrift)}


def save_correction(corr: Correction, path: str | Path) -> None:
    """Write corr to path atomically (a reader never sees half a file)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(corr, "c", tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # two processes may write the same entry
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "tree": json.dumps(tree)})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_correction(path: str | Path) -> Correction:
    """The Correction saved at path; ValueError (one line) when the file is not one."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # safetensors raises its own types for a damaged header
        raise ValueError(f"not a readable correction file ({type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a correction file (format {str(meta.get('format'))[:40]!r})")
    try:
        corr = _decode(json.loads(meta["tree"]), tensors)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"a damaged correction file ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(corr, Correction):
        raise ValueError("a correction file that holds no correction")
    return corr


def _encode(value, name: str, tensors: dict) -> dict:
    """value -> a JSON node of one kind; its arrays and tensors go to tensors under dotted names."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous().clone()   # safetensors takes no views of one storage
        return {"tensor": name}
    if isinstance(value, np.ndarray):
        tensors[name] = torch.from_numpy(value.copy())
        return {"array": name}
    if is_dataclass(value):
        if type(value).__name__ not in CLASSES:
            raise TypeError(f"{type(value).__name__} is not part of a correction")
        return {"class": [type(value).__name__,
                          {f.name: _encode(getattr(value, f.name), f"{name}.{f.name}", tensors) for f in fields(value)}]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"dict": [[_key(k), _encode(v, f"{name}.{_key(k)}", tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot store a {type(value).__name__} in a correction file")


def _key(k):
    return k.item() if isinstance(k, np.generic) else k


def _decode(node: dict, tensors: dict):
    (kind, v), = node.items()
    if kind == "tensor":
        return tensors[v]
    if kind == "array":
        return tensors[v].numpy()
    if kind == "class":
        name, members = v
        return CLASSES[name](**{k: _decode(m, tensors) for k, m in members.items()})
    if kind == "tuple":
        return tuple(_decode(m, tensors) for m in v)
    if kind == "dict":
        return {k: _decode(m, tensors) for k, m in v}
    if kind == "value":
        return v
    raise ValueError(f"unknown node kind {kind!r}")
