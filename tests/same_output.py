"""The product's output on fixed inputs, recorded before a refactor and checked after it.

Each case runs the offline path of run_stream (file -> every frame, media time) on a short driving clip
with the bundled astronaut enrolled as tests.media's quick pack, and keeps, per frame, the pose vector p
Net3D read (NaN when no face) and the published image. `python -m tests.same_output` re-records the
reference under tests/data/same_output/; tests/test_same_output.py checks the product against it.
Only a stride of the images is kept, so the reference stays small.

The pack itself is kept beside the reference (PACK): enrollment's ~100 optimisation steps part between
CPUs (the same quick enrollment on an Intel VM rendered 35.7 dB away from the AMD VM's that recorded the
first reference), so the reference fixes the pack and pins what runs per frame. `--new-pack` enrolls it
again first.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.conftest import SHARED
from tests.media import CLIP, quick_astronaut_pack, short_clip

REFERENCE = Path(__file__).resolve().parent / "data" / "same_output"
PACK = REFERENCE / "astro.avatar"
IMAGE_STRIDE = 9


@dataclass(frozen=True)
class Case:
    name: str
    clip: Path
    frames: int
    feedback_every: int = 0    # run_stream --feedback N


CASES = (
    Case("bundled", CLIP, 36),
    Case("bundled_feedback", CLIP, 24, feedback_every=3),
    Case("shared_man_glasses", SHARED / "media" / "driving_lp_d9_man_glasses.mp4", 36),
)


class Recorder:
    """Stands in for the reenactor in the pipeline and keeps each Output's pose and image."""

    def __init__(self, reenactor):
        object.__setattr__(self, "_inner", reenactor)
        object.__setattr__(self, "poses", [])
        object.__setattr__(self, "images", [])

    def process(self, image, t=None):
        out = self._inner.process(image, t)
        self.poses.append(out.pose)
        self.images.append(out.image.copy())
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def make_engine():
    """The default zoo's engine as run_stream builds it (CPU, quiet)."""
    from streamer.reenact.engine import Engine
    return Engine("default", log=lambda m: None, progress=False)


def run_case(engine, pack: Path, case: Case, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (p [N, K] float64 with NaN rows for frames without a face, images [N, H, W, 3] uint8).
    The session is configured from run_stream's own flags, as `run_stream.py --avatar PACK --source
    CLIP --sink OUT.mp4 [--feedback N]` configures it."""
    from run_stream import build_parser
    from streamer.live import run_offline
    from streamer.reenact.config import ReenactConfig
    clip = short_clip(work / f"{case.name}.mp4", case.frames, case.clip)
    args = build_parser().parse_args(["--avatar", str(pack), "--source", str(clip), "--sink", str(work / "o.mp4"),
                                      "--feedback", str(case.feedback_every)])
    reenactor = engine.make_reenactor(str(pack), **ReenactConfig.from_args(args).session())
    rec = Recorder(reenactor)
    try:
        run_offline(clip, None, rec)
    finally:
        reenactor.close()
    k = len(engine.directions.param_names)
    p = np.stack([np.full(k, np.nan) if q is None else np.asarray(q, np.float64) for q in rec.poses])
    return p, np.stack(rec.images)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def record(names: list[str] | None = None, new_pack: bool = False) -> None:
    REFERENCE.mkdir(parents=True, exist_ok=True)
    engine = make_engine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if new_pack or not PACK.is_file():
            shutil.copyfile(quick_astronaut_pack(engine.zoo, work), PACK)
        pack = PACK
        for case in CASES:
            if names and case.name not in names:
                continue
            if not case.clip.is_file():
                print(f"{case.name}: {case.clip} missing, not recorded")
                continue
            p, images = run_case(engine, pack, case, work)
            np.savez_compressed(REFERENCE / f"{case.name}.npz", p=p, images=images[::IMAGE_STRIDE],
                                stride=IMAGE_STRIDE, frames=len(images))
            print(f"{case.name}: {len(images)} frames, {int(np.isnan(p[:, 0]).sum())} without a face")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="record the product's output on the same-output cases")
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    ap.add_argument("--new-pack", action="store_true", help="enroll the quick pack again (default: keep PACK)")
    a = ap.parse_args()
    record(a.cases, a.new_pack)
