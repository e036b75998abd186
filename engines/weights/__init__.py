"""Model files for the zoos that bring their own weights: the vox256 file table (files), its command line
(cli: `python -m engines.weights status|fetch`), the downloads from the authors' hosts (fetch), random
official-size weights (random_weights)."""
