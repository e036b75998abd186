"""Fréchet Inception Distance with a pluggable feature extractor (no Inception weights ship here).

FID (Heusel et al. 2017) between two image sets is the Fréchet distance of Gaussians fitted to their
features: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the matrix square root is taken
as the sum of square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric PSD, same spectrum as
S1 S2), so no non-symmetric sqrtm and no complex round-off are involved.

Feature extractors are callables `uint8 [N, H, W, 3] RGB -> float [N, D]`. `load_extractor(spec)`:
  * `PATH.onnx`: an ONNX model run by onnxruntime that takes float32 NCHW RGB in [0, 1] at its declared
    input size (299 when the size is dynamic) and returns [N, D] (or [N, D, 1, 1]) features. The
    published FID numbers use the 2048-d pool features of TF's 2015 Inception-v3; export yours with
    that preprocessing inside the graph;
  * `module:function`: a Python factory returning such a callable (your own code).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np

from engines.core.errors import UserError

Extractor = Callable[[np.ndarray], np.ndarray]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    r1 = _psd_sqrt(s1)
    mid = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


class OnnxFeatures:
    """An ONNX feature network: uint8 images -> [N, D] float64 (bilinear resize to its input size)."""

    def __init__(self, path: str | Path, batch: int = 16):
        import onnxruntime as ort
        path = Path(path)
        if not path.is_file():
            raise UserError(f"FID feature model not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise UserError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise UserError(f"{path}: expected an NCHW RGB input, the model's input is {shape}")
        h, w = shape[2], shape[3]
        self.size = (int(w), int(h)) if isinstance(h, int) and isinstance(w, int) else (299, 299)
        self.input = inp.name
        self.batch = batch

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image
        out = []
        for s in range(0, len(images), self.batch):
            chunk = [np.asarray(Image.fromarray(im).resize(self.size, Image.BILINEAR)) for im in images[s:s + self.batch]]
            x = np.stack(chunk).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
            y = self.session.run(None, {self.input: x})[0]
            out.append(np.asarray(y, np.float64).reshape(len(chunk), -1))
        return np.concatenate(out)


def load_extractor(spec: str | None) -> Extractor | None:
    if not spec:
        return None
    if spec.endswith(".onnx"):
        return OnnxFeatures(spec)
    if ":" in spec:
        mod, fn = spec.split(":", 1)
        try:
            return getattr(importlib.import_module(mod), fn)()
        except (ImportError, AttributeError) as e:
            raise UserError(f"--fid-features {spec}: cannot import it ({e})") from None
    raise UserError(f"--fid-features {spec}: give an ONNX file (.onnx) or module:factory")
