"""The zoos by name: `load_zoo("default" | "vox256", ...)` and each zoo's recipe."""
from __future__ import annotations

from pathlib import Path

from engines.core.errors import UserError
from engines.method import default_zoo, vox256
from engines.method.recipes import ZooRecipe
from engines.method.zoo import Zoo

ZOOS = ("default", "vox256")
RECIPES: dict[str, ZooRecipe] = {"default": default_zoo.RECIPE, "vox256": vox256.RECIPE}


def load_zoo(name: str = "default", weights_dir: str | Path | None = None,
             directions: str | Path | None = None, net3d: str | None = None) -> Zoo:
    if name == "default":
        return default_zoo.load_default(directions)
    if name == "vox256":
        return vox256.load_vox256(weights_dir, directions, net3d)   # bring-your-own weights
    raise UserError(f"unknown zoo '{name}' (choose from {', '.join(ZOOS)})")
