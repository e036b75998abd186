"""Acceleration: the verified compile chain and the batched per-avatar generators."""
