"""Model files for the zoos that bring their own weights: the vox256 file table and its status/check CLI (`python -m engines.weights`), random official-size weights."""
