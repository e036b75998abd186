"""Benchmarks (harness above the product; nothing in the product imports it): `python -m streamer.bench`, live, model, server, soak, machine info."""
