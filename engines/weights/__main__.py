"""`python -m engines.weights`: the vox256 weight files' status, checks and fetch (engines.weights.cli)."""
import sys

from engines.weights.cli import main

sys.exit(main())
