"""`python -m engines.weights`: the vox256 weight files' status and checks (engines.weights.files)."""
import sys

from engines.weights.files import main

sys.exit(main())
