"""Foundations every layer uses: user errors, device choice, image views and conversions, safe checkpoint loading, model files shipped in pip packages."""
