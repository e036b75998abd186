"""Reenactment: the engine that turns a driving frame into the avatar's frame, its per-session state and the micro-batching scheduler."""
