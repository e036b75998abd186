"""Shared pytest helpers: the read-only /work/shared folder (official fixtures, test media)."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared relative to the repo; tests that need it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (official fixtures / test media)")
    return SHARED
