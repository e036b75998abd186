"""The HTTP side: the page, WebRTC signaling, controls, avatar uploads, status.

Security: loopback by default; any other bind address needs a token, checked on every endpoint
(X-Token header, `Authorization: Bearer`, or ?token=). Without a token the Host header must name the
loopback address (defeats DNS rebinding). State-changing endpoints accept only JSON or image bodies,
which a foreign web page cannot send cross-origin without a CORS preflight we never answer.
"""
from __future__ import annotations

import hmac
import io
import ipaddress
import json
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from engines.errors import UserError
from streamer.controls import Controller
from streamer.webrtc import PeerManager, SignalingError

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
MIN_UPLOAD_SIDE = 64
COOKIE = "reenact_token"   # set when the page is opened with ?token=, so its script and fetches carry it
IMAGE_TYPES = {   # content type -> file signature
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise UserError(f"binding to {host} exposes the stream to the network: add --token SECRET "
                        f"(the page is then opened as http://HOST:PORT/?token=SECRET)")
    if token is not None and len(token) < 8:
        raise UserError("--token must be at least 8 characters")


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class AvatarStore:
    """Uploaded avatar photos: type- and size-checked, decoded, re-encoded as PNG into a private temp
    folder (so what the engine reads is a clean image, never the uploaded bytes). Keeps the newest
    `keep` uploads."""

    def __init__(self, keep: int = 32):
        self.dir = Path(tempfile.mkdtemp(prefix="reenact-avatars-"))
        self.keep = keep
        self.ids: list[str] = []

    def add(self, body: bytes, content_type: str) -> str:
        from PIL import Image

        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            raise UploadError(415, f"avatar must be PNG, JPEG or WebP (got {ctype or 'no type'})")
        if len(body) > MAX_UPLOAD_BYTES:
            raise UploadError(413, f"avatar larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not body.startswith(IMAGE_TYPES[ctype]) or (ctype == "image/webp" and body[8:12] != b"WEBP"):
            raise UploadError(415, f"file content is not {ctype}")
        try:
            with Image.open(io.BytesIO(body)) as im:
                if im.format not in ("PNG", "JPEG", "WEBP"):
                    raise UploadError(415, "not a PNG/JPEG/WebP image")
                w, h = im.size
                if w * h > MAX_UPLOAD_PIXELS:
                    raise UploadError(413, f"avatar {w}x{h} has more than {MAX_UPLOAD_PIXELS} pixels")
                if min(w, h) < MIN_UPLOAD_SIDE:
                    raise UploadError(400, f"avatar {w}x{h} is smaller than {MIN_UPLOAD_SIDE} pixels")
                rgb = im.convert("RGB")
        except UploadError:
            raise
        except Exception as e:
            raise UploadError(415, f"cannot decode image: {type(e).__name__}") from None
        aid = secrets.token_hex(8)
        rgb.save(self.dir / f"{aid}.png")
        self.ids.append(aid)
        while len(self.ids) > self.keep:
            (self.dir / f"{self.ids.pop(0)}.png").unlink(missing_ok=True)
        return aid

    def path(self, aid) -> Path:
        if not isinstance(aid, str) or aid not in self.ids:
            raise UploadError(404, "unknown avatar id (upload it first)")
        return self.dir / f"{aid}.png"

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _token_of(request: web.Request) -> str | None:
    t = request.headers.get("X-Token")
    if t is None and request.headers.get("Authorization", "").startswith("Bearer "):
        t = request.headers["Authorization"][len("Bearer "):]
    if t is None:
        t = request.query.get("token")
    return t if t is not None else request.cookies.get(COOKIE)


def make_security(token: str | None, port: int):
    loop_hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}

    @web.middleware
    async def security(request: web.Request, handler):
        if token is not None:
            given = _token_of(request) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response({"error": "missing or wrong token"}, status=403)
        elif request.host not in loop_hosts:
            return web.json_response({"error": f"unexpected Host {request.host!r}"}, status=403)
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
            return web.json_response({"error": "cross-origin request refused"}, status=403)
        resp = await handler(request)
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    return security


async def _json_body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def create_app(*, peers: PeerManager | None, controller: Controller | None, token: str | None, port: int,
               avatars: AvatarStore, status=lambda: {}) -> web.Application:
    """peers None: control/status endpoints only (no page, no signaling)."""
    app = web.Application(middlewares=[make_security(token, port)],
                          client_max_size=MAX_UPLOAD_BYTES + 64 * 1024)

    def err(status: int, msg: str):
        return web.json_response({"error": msg}, status=status)

    async def page(request):
        resp = web.FileResponse(WEB_DIR / "index.html")
        if token is not None:   # SameSite=Strict: never sent by another site's requests (no CSRF)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return resp

    async def script(request):
        return web.FileResponse(WEB_DIR / "app.js", headers={"Content-Type": "text/javascript"})

    async def offer(request):
        body = await _json_body(request)
        try:
            avatar = avatars.path(body["avatar"]) if body.get("avatar") else None
            return web.json_response(await peers.offer(body.get("sdp"), body.get("type"), avatar))
        except (SignalingError, UploadError) as e:
            return err(e.status, str(e))

    async def close(request):
        body = await _json_body(request)
        return web.json_response({"closed": await peers.close(str(body.get("peer", "")))})

    async def upload(request):
        try:
            body = await request.read()
            return web.json_response({"avatar": avatars.add(body, request.content_type)})
        except UploadError as e:
            return err(e.status, str(e))

    async def control(request):
        body = await _json_body(request)
        action = body.get("action")
        target = controller
        if body.get("peer"):
            s = peers.sessions.get(str(body["peer"])) if peers else None
            if s is None or s.controls is None:
                return err(404, "no such peer driving its own stream")
            target = s.controls
        if target is None:
            return err(404, "no server stream to control; pass a peer id")
        try:
            kw = {}
            if action == "avatar":
                kw["path"] = avatars.path(body.get("avatar")) if body.get("avatar") else None
            if action == "side_by_side" and "value" in body:
                kw["value"] = bool(body["value"])
            return web.json_response({"ok": True, "message": await target.handle(action, **kw)})
        except UploadError as e:
            return err(e.status, str(e))
        except UserError as e:
            return err(400, str(e))

    async def get_status(request):
        d = dict(status())
        if peers is not None:
            d["peers"] = [s.snapshot() for s in list(peers.sessions.values())]
        return web.json_response(d)

    app.router.add_get("/status", get_status)
    app.router.add_post("/control", control)
    app.router.add_post("/avatar", upload)
    if peers is not None:
        app.router.add_get("/", page)
        app.router.add_get("/app.js", script)
        app.router.add_post("/offer", offer)
        app.router.add_post("/close", close)
    return app


@dataclass
class Server:
    runner: web.AppRunner
    host: str
    port: int
    peers: PeerManager | None
    avatars: AvatarStore
    token: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        if self.peers is not None:
            await self.peers.close_all()
        await self.runner.cleanup()
        self.avatars.cleanup()


async def start_server(make_reenactor=None, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                       webrtc: bool = True, server_pipeline=None, controller: Controller | None = None,
                       default_avatar=None, max_peers: int = 8, side_by_side: bool | None = None,
                       status=lambda: {}) -> Server:
    """Bind (port 0: any free port), then serve. Errors binding -> UserError."""
    check_bind(host, token)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
    port = sock.getsockname()[1]
    peers = PeerManager(make_reenactor, default_avatar=default_avatar, server=server_pipeline,
                        max_peers=max_peers, side_by_side=side_by_side) if webrtc else None
    avatars = AvatarStore()
    app = create_app(peers=peers, controller=controller, token=token, port=port, avatars=avatars,
                     status=status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return Server(runner, host, port, peers, avatars, token)
