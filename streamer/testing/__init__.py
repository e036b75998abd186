"""Test helpers (harness above the product): fake reenactors and sources, a WebRTC test client."""
