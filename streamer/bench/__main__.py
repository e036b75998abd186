"""`python -m streamer.bench --sessions N`: the product engine's frame rate (streamer.bench.sessions)."""
import sys

from streamer.bench.sessions import main

sys.exit(main())
