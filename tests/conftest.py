"""Shared pytest helpers: the read-only /work/shared folder (official fixtures, test media), the
default zoo's engine."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared relative to the repo; tests that need it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (official fixtures / test media)")
    return SHARED


@pytest.fixture(scope="module")
def engine():
    """The default zoo's engine, quiet (modules that need another set-up define their own)."""
    from streamer.reenact.engine import Engine
    return Engine("default", log=lambda m: None, progress=False)


@pytest.fixture(scope="session")
def astronaut_pack(tmp_path_factory) -> Path:
    """The bundled portrait enrolled exactly as the product enrolls it (~50 s), once per test session:
    for tests of how the avatar moves and looks (quick packs with fewer steps barely move)."""
    from engines.core.photo import read_photo
    from engines.method.zoos import load_zoo
    from streamer.avatar.enroll import Enroller
    from tests.media import ASTRONAUT
    pack = Enroller(load_zoo("default"), progress=False, log=lambda m: None).enroll(read_photo(ASTRONAUT), ASTRONAUT.name)
    path = tmp_path_factory.mktemp("astronaut") / "astronaut.avatar"
    pack.save(path)
    return path


def pytest_configure(config):
    # one torch thread: on small shared machines two threads wait on each other far more than they
    # help (measured 10-100x slowdowns under load); CI_TORCH_THREADS overrides
    import os

    import torch
    torch.set_num_threads(int(os.environ.get("CI_TORCH_THREADS", "1")))
