"""Helpers shared by the tests/test_stream_*.py files."""
import asyncio
import contextlib
import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def loopback_ice(monkeypatch):
    """aioice leaves 127.0.0.1 out of its host candidates: pin them to loopback for the test."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@contextlib.asynccontextmanager
async def served(make_reenactor, **kw):
    """A WebRTC server on any free port; kw: ServeConfig fields, else ServerParts ones (server_pipeline:
    its `pipeline`)."""
    from dataclasses import fields

    from streamer.web.config import ServeConfig
    from streamer.web.webapp import ServerParts, start_server

    names = {f.name for f in fields(ServeConfig)}
    cfg = ServeConfig(**{"webrtc": True, "port": 0, **{k: v for k, v in kw.items() if k in names}})
    rest = {("pipeline" if k == "server_pipeline" else k): v for k, v in kw.items() if k not in names}
    server = await start_server(cfg, ServerParts(make_reenactor, **rest))
    try:
        yield server
    finally:
        await server.close()


async def stop_stream(cap, pipe, tasks) -> None:
    """Stop the capture, close the pipeline's input, let the pipeline and its sinks drain, close it."""
    await asyncio.to_thread(cap.stop)
    pipe.input.close()
    await asyncio.gather(*tasks)
    pipe.close()


def png_bytes(seed: int, size=(96, 96), fmt="PNG") -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def psnr(a, b) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
