"""The product reproduces its recorded output (tests/same_output.py): per-frame p within 1e-4, images
at >= 40 dB PSNR. First recorded before the one-engine refactor and reproduced bit-exact after it on
the machine that recorded it; re-recorded on 2026-12-03 with its pack kept beside it, since enrollment
differs between CPUs and the per-frame path should not; re-recorded on 2026-12-05 when the driver's roll
moved from G to a turn of the published image, and again when G began to show the yaw and pitch the
turned image must read as (changes of output on purpose). The --feedback 3 case is a closed loop through MediaPipe reading the avatar's own output:
once, in a fresh clone under a load average of ~16 on 2 cores, one of its frames came out at 37.6 dB
(a rerun there passed); if it fails alone, rerun it before suspecting the engine."""
import numpy as np
import pytest

from tests.same_output import CASES, PACK, REFERENCE, make_engine, psnr, run_case

pytestmark = pytest.mark.slow   # each test here takes (or builds a fixture of) more than ~30 s

P_TOL = 1e-4
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assert PACK.is_file(), f"no recorded pack {PACK}: python -m tests.same_output --new-pack"
    return make_engine(), PACK, tmp_path_factory.mktemp("same_output")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_product_reproduces_recorded_output(case, setup):
    ref_file = REFERENCE / f"{case.name}.npz"
    if not case.clip.is_file():
        pytest.skip(f"{case.clip} not present (../shared media)")
    assert ref_file.is_file(), f"no reference for {case.name}: python -m tests.same_output {case.name}"
    ref = np.load(ref_file)
    engine, pack, work = setup
    p, images = run_case(engine, pack, case, work)
    assert len(p) == int(ref["frames"])
    # a face found in the same frames, and the same p in those frames
    np.testing.assert_array_equal(np.isnan(p[:, 0]), np.isnan(ref["p"][:, 0]))
    np.testing.assert_allclose(p, ref["p"], atol=P_TOL, rtol=0, equal_nan=True)
    kept = images[::int(ref["stride"])]
    assert kept.shape == ref["images"].shape
    worst = min(psnr(a, b) for a, b in zip(kept, ref["images"]))
    assert worst >= MIN_PSNR, f"{case.name}: worst frame {worst:.1f} dB"
