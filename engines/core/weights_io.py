"""Reading user-supplied checkpoint files safely, with one-line errors that say what to do.

Everything goes through `engines.core.checkpoints.load_torch_file` (torch.load weights_only=True). Two
additions for the files of the paper's zoo:
  * NVlabs StyleGAN2(-ADA) pickles are refused, whatever their suffix, with the conversion route
    (unpickling them runs their code);
  * rosinality `train.py` checkpoints carry an `argparse.Namespace` ('args'); that one plain-data class is
    allowed in the weights-only unpickler (it cannot run code), so such files load as they are.
"""
from __future__ import annotations

import argparse
import re
import tarfile
import zipfile
from pathlib import Path

import torch

from engines.core.checkpoints import load_torch_file
from engines.core.errors import UserError

PKL_ROUTE = ("convert it to a rosinality-layout .pt (a dict with 'g_ema') in an environment where you "
             "trust that code, e.g. with a stylegan2-ada-pytorch -> rosinality converter, then pass the .pt "
             "(see docs/weights.md, 'NVlabs .pkl')")


def _looks_like_nvlabs_pickle(path: Path) -> bool:
    """Raw (non-zip) pickles naming NVlabs' dnnlib/torch_utils modules."""
    try:
        if zipfile.is_zipfile(path):
            return False
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head[:1] == b"\x80" and (b"dnnlib" in head or b"torch_utils" in head)


def read_checkpoint(path: str | Path, what: str):
    """Load a torch checkpoint as plain containers of tensors; UserError (one line) on any problem."""
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        raise UserError(f"{path}: {what} is an NVlabs-style pickle (.pkl), refused because unpickling runs "
                        f"code; {PKL_ROUTE}")
    if path.is_file() and _looks_like_nvlabs_pickle(path):
        raise UserError(f"{path}: {what} is an NVlabs StyleGAN pickle (dnnlib/torch_utils objects), refused "
                        f"because unpickling runs code; {PKL_ROUTE}")
    if (path.is_file() and path.suffix != ".safetensors" and not zipfile.is_zipfile(path)
            and not tarfile.is_tarfile(path)):
        with open(path, "rb") as f:
            first = f.read(1)
        if first != b"\x80":  # not a torch zip archive, nor a legacy tar or pickle stream
            raise UserError(f"{path}: {what} is corrupt or truncated, or not a PyTorch checkpoint at all")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return load_torch_file(path, what=what)
        except UserError as e:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e.__context__ or ""))
            if found:  # torch's own message is long and multi-line; name the offending object
                raise UserError(f"{path}: {what} holds objects other than tensors ({found.group(1)}); refused, "
                                "because loading it would run code") from None
            raise


def require_dict(obj, path: Path, what: str, layout: str) -> dict:
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {what} should be a dict ({layout}), found {type(obj).__name__}")
    return obj


def strip_prefix(sd: dict, prefixes=("module.",)) -> dict:
    """Drop a DataParallel-style prefix when every key has it."""
    for p in prefixes:
        if sd and all(isinstance(k, str) and k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
    return sd
