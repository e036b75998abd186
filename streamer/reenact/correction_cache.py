"""Each pack's response correction kept on disk, beside the enrolled packs, so that a pack's next process
reads it back in well under a second instead of measuring it again: the astronaut's takes ~21 s on a
2-vCPU VM (docs/streaming.md).

An entry is named by a hash of everything the measurement reads: the pack's tensors and pose, the
engine's generator and this session's A, the settings in the session's key, the device and readers,
the versions of the libraries that render and read, and this software's own source. A change to any of
them measures afresh; a stale curve is never read. An entry that does not load is measured again and
replaced; a cache that cannot be written is reported once and the run goes on.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

import calibration
import engines
import streamer
from engines.method.correction import Correction
from engines.method.correction_file import load_correction, save_correction
from streamer.avatar.enroll import cache_dir, cache_root
from streamer.avatar.pack import AvatarPack

# what renders, frames and reads the sweeps (absent ones count as such: ONNX Runtime renders the DCGAN
# where it is installed, OpenCV turns the published frame where one of its builds is)
LIBRARIES = ("mediapipe", "torch", "numpy", "safetensors", "onnxruntime", "opencv-contrib-python", "opencv-python",
             "opencv-python-headless")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of this software's Python source and the versions of the libraries that render and read."""
    h = hashlib.sha256()
    for package in (engines, calibration, streamer):
        root = Path(package.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{package.__name__}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    for name in LIBRARIES:
        try:
            h.update(f"{name}={version(name)}\0".encode())
        except PackageNotFoundError:
            h.update(f"{name}=none\0".encode())
    return h.hexdigest()


def tensors_hash(named: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(named):
        v = named[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}\0".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())   # bytes: any dtype, 0-dim too
    return h.hexdigest()


def pack_hash(pack: AvatarPack) -> str:
    """What of a pack the measurement reads: its tensors, its pose and how its display is framed."""
    named = {"latent": pack.latent, "crop": torch.from_numpy(np.array(pack.crop)),   # a copy: it may be read-only
             "display": torch.from_numpy(np.array(pack.display)),
             **{f"tuned.{k}": v for k, v in pack.tuned.items()},
             **{f"directions.{k}": v for k, v in (pack.directions or {}).items()}}
    facts = json.dumps({"p": [float(x) for x in pack.p], "display_scale": pack.display_scale})
    return hashlib.sha256(f"{tensors_hash(named)}{facts}".encode()).hexdigest()


def corrections_dir(avatar: str | Path | None) -> Path:
    """Where the corrections of avatar's pack are kept: beside its enrollments (an upload's private cache,
    so they are deleted with it), or in the user cache (no path: a pack handed over in memory)."""
    return (cache_root(Path(avatar)) if avatar is not None else cache_dir()) / "corrections"


class CorrectionCache:
    """get(folder, pack, parts, make): the correction stored in folder under the hash of (pack, parts,
    the code), or make()'s, stored there. parts: all else the measurement depends on, JSON-able."""

    def __init__(self, log=print):
        self.log = log
        self._warned = False

    @staticmethod
    def path(folder: Path, pack: AvatarPack, parts: tuple) -> Path:
        key = json.dumps([pack_hash(pack), code_fingerprint(), *parts])
        return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.correction"

    def get(self, folder: Path, pack: AvatarPack, parts: tuple,
            make: Callable[[], Correction | None]) -> Correction | None:
        path = self.path(folder, pack, parts)
        if path.is_file():
            try:
                return load_correction(path)
            except ValueError as e:
                self.log(f"avatar: the stored response correction {path.name} is measured again ({e})")
        self.log(f"avatar: measuring its response to the directions (once; kept in {folder})")   # ~14 s
        corr = make()
        if corr is not None:
            try:
                save_correction(corr, path)
            except (OSError, TypeError, ValueError) as e:   # the run goes on without the entry
                if not self._warned:
                    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)[:120]
                    self.log(f"avatar: response corrections are not kept ({why}: {path.parent})")
                self._warned = True
        return corr
