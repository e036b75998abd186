"""Streaming: channels and the pipeline, sources, sinks, controls."""
