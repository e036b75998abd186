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
    from streamer.reenact import Engine
    return Engine("default", log=lambda m: None, progress=False)


def pytest_configure(config):
    # one torch thread: on small shared machines two threads wait on each other far more than they
    # help (measured 10-100x slowdowns under load); CI_TORCH_THREADS overrides
    import os

    import torch
    torch.set_num_threads(int(os.environ.get("CI_TORCH_THREADS", "1")))
