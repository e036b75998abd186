"""A benchmark's figures saved as JSON (`--json FILE`), its folder made if missing."""
from __future__ import annotations

import json
from pathlib import Path


def save_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
