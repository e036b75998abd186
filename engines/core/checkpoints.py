"""Safe checkpoint reading: tensors only (never unpickle code), with one-line errors."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from engines.core.errors import UserError


def load_torch_file(path: str | Path, what: str = "checkpoint"):
    """torch.load with weights_only=True on CPU; every failure becomes a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    if path.suffix == ".pkl":
        raise UserError(f"{path}: pickled modules (.pkl) are refused because unpickling runs code; "
                        "convert to a rosinality-style .pt state dict first (see docs/weights.md)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises several types for corrupt headers
            raise UserError(f"{path}: cannot read {what} as safetensors ({type(e).__name__}: {e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: {what} holds more than tensors and plain containers; refused "
                        f"(weights_only load: {msg[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: {what} is corrupt or truncated ({msg[:160]})") from None
