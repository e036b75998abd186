"""`python -m streamer.bench --sessions N`: the product engine's frame rate (streamer.bench.sessions);
with `--cluster local|ADDRESS --replicas R`: the same sessions rendering on Ray Serve (streamer.bench.cluster)."""
import sys

from streamer.bench import cluster, sessions

on_cluster = any(a == "--cluster" or a.startswith("--cluster=") for a in sys.argv[1:])
sys.exit(cluster.main() if on_cluster else sessions.main())
