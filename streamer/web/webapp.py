"""The HTTP side: the page, WebRTC signaling, controls, avatar uploads, status.

Security: loopback by default; any other bind address needs a token, checked on every endpoint
(X-Token header, `Authorization: Bearer`, or ?token=). Without a token the Host header must name the
loopback address (defeats DNS rebinding). State-changing endpoints accept only JSON or image bodies,
which a foreign web page cannot send cross-origin without a CORS preflight we never answer.

Robustness: every body is read by one reader with a size cap and a time limit, JSON bodies are parsed
with depth, number and type limits and then checked field by field (`ControlRequest` etc.), so any
malformed or mistyped body gets a 4xx with a short JSON error. Image uploads are decoded on a worker
thread (a 16-MP photo takes seconds), at most a few at a time; open connections are capped.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import io
import json
import math
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aiohttp import web

from engines.core.errors import UserError
from streamer.avatar.preparing import Preparer, display_name
from streamer.stream.controls import Controller
from streamer.web.config import ServeConfig, is_loopback
from streamer.web.webrtc import PeerManager, SignalingError

WEB_DIR = Path(__file__).resolve().parent
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
MIN_UPLOAD_SIDE = 64
MAX_UPLOADS = 4              # uploads being received or decoded at once; more get 503 (retry later)
MAX_JSON_BYTES = 256 * 1024  # an SDP offer is 2-10 KB
MAX_JSON_DEPTH = 4           # our bodies are flat objects
MAX_INT_DIGITS = 18
BODY_TIMEOUT_S = 30.0        # a body that trickles in slower than this is dropped (408)
MAX_CONNECTIONS = 64         # open HTTP connections (a browser keeps ~6); more get 503 and are closed
KEEPALIVE_S = 15.0
COOKIE = "reenact_token"   # set when the page is opened with ?token=, so its script and fetches carry it
IMAGE_TYPES = {   # content type -> file signature
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
}
IMAGE_FORMATS = {"image/png": {"PNG": ".png"}, "image/jpeg": {"JPEG": ".jpg", "MPO": ".jpg"},   # MPO: phone
                 "image/webp": {"WEBP": ".webp"}}                                                  # cameras
CONTROL_ACTIONS = ("reset", "side_by_side", "avatar", "next_avatar")


def short(text, limit: int = 60) -> str:
    """repr() of client-supplied text for an error message, cut to `limit` characters."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit] + "...'"


def normalize_token(token: str | None) -> str | None:
    """An empty token (`--token ""`, an empty REENACT_TOKEN) means no token."""
    return token if token and token.strip() else None


def check_bind(host: str, token: str | None) -> None:
    token = normalize_token(token)
    if not is_loopback(host) and not token:
        raise UserError(f"binding to {host} exposes the stream to the network: add --token SECRET "
                        f"(the page is then opened as http://HOST:PORT/?token=SECRET)")
    if token is not None and len(token) < 8:
        raise UserError("--token must be at least 8 characters")


class HttpError(Exception):
    """Answered as {"error": message} with `status` (4xx/5xx), never a traceback."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


UploadError = HttpError   # the name the rest of the code knows uploads' errors by


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole request body, at most `limit` bytes, within `timeout_s` (BODY_TIMEOUT_S). Errors ->
    HttpError: 413 too large, 408 too slow, 400 when the client disconnects or sends a broken body."""
    timeout_s = timeout_s or BODY_TIMEOUT_S
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise HttpError(408, f"body not received within {timeout_s:.0f} s") from None
    except HttpError:
        raise
    except Exception as e:   # client gone mid-body (ConnectionResetError), broken chunking, ...
        raise HttpError(400, f"incomplete body ({type(e).__name__})") from None
    return b"".join(chunks)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("number too long")
    return int(text)


def _parse_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):       # 1e999
        raise ValueError("number out of range")
    return v


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")   # NaN, Infinity, -Infinity


def _depth(v, limit: int, level: int = 1) -> int:
    if level > limit:
        return level
    items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
    return max([level] + [_depth(x, limit, level + 1) for x in items])


def parse_json(body: bytes) -> dict:
    """A JSON object with finite numbers of sane length, at most MAX_JSON_DEPTH deep; else HttpError 400."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_reject_constant)
    except RecursionError:      # nesting deeper than the interpreter's stack: far beyond our limit
        raise HttpError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError):   # JSONDecodeError is a ValueError, as are our limits
        raise HttpError(400, "body is not valid JSON (UTF-8, finite numbers of at most "
                             f"{MAX_INT_DIGITS} digits)") from None
    if not isinstance(value, dict):
        raise HttpError(400, "expected a JSON object")
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise HttpError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


async def json_body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise HttpError(415, "send JSON (Content-Type: application/json)")
    return parse_json(await read_body(request, MAX_JSON_BYTES))


def field(body: dict, name: str, kind: type, *, max_len: int = 200):
    """body[name] if it is a `kind` (str or bool; a JSON number is never a bool), None if absent or
    null; a value of another type -> HttpError 400."""
    v = body.get(name)
    if v is None:
        return None
    if kind is bool and not isinstance(v, bool):
        raise HttpError(400, f"'{name}' must be true or false, not {type(v).__name__} {short(v, 30)}")
    if kind is str:
        if not isinstance(v, str):
            raise HttpError(400, f"'{name}' must be a string, not {type(v).__name__}")
        if len(v) > max_len:
            raise HttpError(400, f"'{name}' is longer than {max_len} characters")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:    # a lone surrogate escape (\ud800)
            raise HttpError(400, f"'{name}' is not valid text") from None
    return v


@dataclass(frozen=True)
class ControlRequest:
    """POST /control: {action, peer?, avatar?, value?}."""
    action: str
    peer: str | None = None
    avatar: str | None = None
    value: bool | None = None

    @classmethod
    def parse(cls, body: dict) -> "ControlRequest":
        action = body.get("action")
        if not isinstance(action, str) or action not in CONTROL_ACTIONS:
            raise HttpError(400, f"unknown control {short(action)} ({', '.join(CONTROL_ACTIONS)})")
        return cls(action, field(body, "peer", str), field(body, "avatar", str), field(body, "value", bool))


@dataclass(frozen=True)
class OfferRequest:
    """POST /offer: {sdp, type, avatar?}."""
    sdp: str | None
    type: str | None
    avatar: str | None = None

    @classmethod
    def parse(cls, body: dict) -> "OfferRequest":
        return cls(field(body, "sdp", str, max_len=MAX_JSON_BYTES), field(body, "type", str),
                   field(body, "avatar", str))


class AvatarStore:
    """Uploaded avatar photos in a private temp folder, deleted at exit. Each is type- and size-checked
    and fully decoded first (on a worker thread: seconds for a large photo), then kept as uploaded: a
    valid JPEG/PNG/WebP is compact and keeps its EXIF orientation, which read_photo applies as the CLI
    does. Enrollments of these photos are cached inside the folder too (streamer.avatar.enroll.private_cache),
    so they go with it. Keeps the newest `keep` uploads."""

    def __init__(self, keep: int = 32, max_pending: int = MAX_UPLOADS):
        from streamer.avatar.enroll import private_cache

        self.dir = Path(tempfile.mkdtemp(prefix="reenact-avatars-"))
        self.packs = self.dir / "packs"
        private_cache(self.dir, self.packs)
        self.keep = keep
        self.files: dict[str, Path] = {}     # id -> stored photo, oldest first
        self.max_pending = max_pending
        self.pending = 0
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="avatar-upload")

    @property
    def ids(self) -> list[str]:
        return list(self.files)

    def add(self, body: bytes, content_type: str) -> str:
        """Blocking (decodes the image): run it off the event loop."""
        from PIL import Image

        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            raise UploadError(415, f"avatar must be PNG, JPEG or WebP (got {short(ctype, 40) if ctype else 'no type'})")
        if len(body) > MAX_UPLOAD_BYTES:
            raise UploadError(413, f"avatar larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not body.startswith(IMAGE_TYPES[ctype]) or (ctype == "image/webp" and body[8:12] != b"WEBP"):
            raise UploadError(415, f"file content is not {ctype}")
        try:
            with Image.open(io.BytesIO(body)) as im:
                suffix = IMAGE_FORMATS[ctype].get(im.format)
                if suffix is None:
                    raise UploadError(415, f"file content is {im.format}, not {ctype}")
                w, h = im.size
                if w * h > MAX_UPLOAD_PIXELS:
                    raise UploadError(413, f"avatar {w}x{h} has more than {MAX_UPLOAD_PIXELS} pixels")
                if min(w, h) < MIN_UPLOAD_SIDE:
                    raise UploadError(400, f"avatar {w}x{h} is smaller than {MIN_UPLOAD_SIDE} pixels")
                if im.format in ("JPEG", "MPO"):
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))   # every byte is still decoded
                im.load()     # the whole image decodes: truncated or corrupt data fails here
        except UploadError:
            raise
        except Exception as e:
            raise UploadError(415, f"cannot decode image: {type(e).__name__}") from None
        aid = secrets.token_hex(8)
        path = self.dir / f"{aid}{suffix}"
        path.write_bytes(body)
        self.files[aid] = path
        while len(self.files) > self.keep:
            self.files.pop(next(iter(self.files))).unlink(missing_ok=True)
        return aid

    async def upload(self, request: web.Request) -> str:
        """Receive and store one upload without blocking the event loop; 503 while MAX_UPLOADS run."""
        ctype = (request.content_type or "").lower()
        if ctype not in IMAGE_TYPES:     # before reading megabytes of a body we would refuse
            raise UploadError(415, f"avatar must be PNG, JPEG or WebP (got {short(ctype, 40) if ctype else 'no type'})")
        if self.pending >= self.max_pending:
            raise UploadError(503, f"{self.pending} uploads in progress; try again in a few seconds")
        self.pending += 1
        try:
            body = await read_body(request, MAX_UPLOAD_BYTES)
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.add, body, ctype)
        finally:
            self.pending -= 1

    def path(self, aid) -> Path:
        if not isinstance(aid, str) or aid not in self.files:
            raise UploadError(404, "unknown avatar id (upload it first)")
        return self.files[aid]

    def cleanup(self) -> None:
        from streamer.avatar.enroll import private_cache

        self.executor.shutdown(wait=True, cancel_futures=True)
        private_cache(self.dir, None)
        shutil.rmtree(self.dir, ignore_errors=True)


def _token_of(request: web.Request) -> str | None:
    t = request.headers.get("X-Token")
    if t is None and request.headers.get("Authorization", "").startswith("Bearer "):
        t = request.headers["Authorization"][len("Bearer "):]
    if t is None:
        t = request.query.get("token")
    return t if t is not None else request.cookies.get(COOKIE)


def _as_bytes(text: str) -> bytes | None:
    """Header text as the bytes the client sent (aiohttp decodes them as UTF-8 with surrogateescape);
    None for text that has no byte form."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def make_security(token: str | None, port: int):
    loop_hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
    want = _as_bytes(token) if token is not None else None

    @web.middleware
    async def security(request: web.Request, handler):
        if token is not None:
            given = _as_bytes(_token_of(request) or "")
            if given is None or not hmac.compare_digest(given, want):
                return web.json_response({"error": "missing or wrong token"}, status=403)
        elif request.host not in loop_hosts:
            return web.json_response({"error": f"unexpected Host {short(request.host)}"}, status=403)
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
            return web.json_response({"error": "cross-origin request refused"}, status=403)
        try:
            resp = await handler(request)
        except HttpError as e:
            resp = web.json_response({"error": str(e)}, status=e.status)
        except web.HTTPException as e:     # aiohttp's own (404 no such route, 405, ...): JSON as well
            if e.status < 400:
                raise
            resp = web.json_response({"error": e.reason}, status=e.status)
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    return security


def create_app(*, peers: PeerManager | None, controller: Controller | None, token: str | None, port: int,
               avatars: AvatarStore, status=lambda: {}, preps: Preparer | None = None) -> web.Application:
    """peers None: control/status endpoints only (no page, no signaling). preps: avatars being prepared
    (the default one is "default"); offers and avatar switches wait for theirs."""
    token = normalize_token(token)
    preps = preps if preps is not None else Preparer()
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

    async def style(request):
        return web.FileResponse(WEB_DIR / "style.css", headers={"Content-Type": "text/css"})

    async def ready(aid: str | None) -> None:
        """Wait until avatar `aid` (None: the default) is prepared; HttpError 400 if that failed."""
        p = preps.get(aid or "default")
        if p is not None and (await preps.wait(p.id)).state != "ready":
            raise HttpError(400, f"avatar {p.name}: {p.error}")

    async def offer(request):
        req = OfferRequest.parse(await json_body(request))
        try:
            avatar = avatars.path(req.avatar) if req.avatar else None
            await ready(req.avatar)    # enrolling a photo takes a minute: the answer comes after it
            return web.json_response(await peers.offer(req.sdp, req.type, avatar))
        except SignalingError as e:
            return err(e.status, str(e))

    async def close(request):
        peer = field(await json_body(request), "peer", str)
        return web.json_response({"closed": await peers.close(peer) if peer else False})

    async def upload(request):
        name = display_name(request.query.get("name"))     # the file's name, shown on the page
        aid = await avatars.upload(request)
        p = preps.start(aid, avatars.path(aid), name)       # enrolls now, in the background
        return web.json_response({"avatar": aid, "name": name, "state": p.state})

    async def thumbnail(request):
        p = preps.get(request.match_info["aid"])
        if p is None or p.thumbnail is None:
            return err(404, "no thumbnail for this avatar (yet)")
        return web.Response(body=p.thumbnail, content_type="image/jpeg")

    async def control(request):
        req = ControlRequest.parse(await json_body(request))
        target = controller
        if req.peer:
            s = peers.sessions.get(req.peer) if peers else None
            if s is None or s.controls is None:
                return err(404, "no such peer driving its own stream")
            target = s.controls
        if target is None:
            return err(404, "no server stream to control; pass a peer id")
        try:
            kw = {}
            if req.action == "avatar":
                kw["path"] = avatars.path(req.avatar) if req.avatar else None
                await ready(req.avatar)
            if req.action == "side_by_side" and req.value is not None:
                kw["value"] = req.value
            message = await target.handle(req.action, **kw)
            p = preps.get(req.avatar or "default") if req.action == "avatar" else None
            if p is not None:
                message = f"avatar: {p.name}"     # the photo's own name, not the id it is stored by
            return web.json_response({"ok": True, "message": message})
        except UserError as e:
            return err(400, str(e))

    async def get_status(request):
        d = dict(status())
        if peers is not None:
            d["peers"] = [s.snapshot() for s in list(peers.sessions.values())]
        # what the page may offer: watching needs the server's own source, controls without a peer
        # need its controller
        d["can_watch"] = peers is not None and peers.server is not None
        d["can_control"] = controller is not None
        d["avatars"] = preps.snapshot()
        return web.json_response(d)

    app.router.add_get("/status", get_status)
    app.router.add_post("/control", control)
    app.router.add_post("/avatar", upload)
    app.router.add_get("/avatars/{aid}/thumbnail.jpg", thumbnail)
    if peers is not None:
        app.router.add_get("/", page)
        app.router.add_get("/app.js", script)
        app.router.add_get("/style.css", style)
        app.router.add_post("/offer", offer)
        app.router.add_post("/close", close)
    return app


class _Counted(asyncio.Protocol):
    """An HTTP connection's protocol, counted while it is open (CappedSite)."""

    def __init__(self, inner: asyncio.Protocol, site: "CappedSite"):
        self._inner, self._site = inner, site
        site.open += 1

    def connection_made(self, transport):
        self._inner.connection_made(transport)

    def data_received(self, data):
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def pause_writing(self):
        self._inner.pause_writing()

    def resume_writing(self):
        self._inner.resume_writing()

    def connection_lost(self, exc):
        self._site.open -= 1
        self._inner.connection_lost(exc)


class _Refuse(asyncio.Protocol):
    """Past the connection cap: one 503, then the connection is closed."""
    BODY = b'{"error": "too many connections"}'

    def connection_made(self, transport):
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(self.BODY), self.BODY))
        transport.close()


class CappedSite(web.SockSite):
    """aiohttp's SockSite with at most `max_connections` open connections (aiohttp has no such cap; an
    idle or slow client would otherwise hold a socket and a handler each)."""

    def __init__(self, runner, sock, max_connections: int = MAX_CONNECTIONS):
        super().__init__(runner, sock)
        self.max_connections, self.open = max_connections, 0

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server

        def factory():
            return _Counted(server(), self) if self.open < self.max_connections else _Refuse()

        self._server = await asyncio.get_running_loop().create_server(factory, sock=self._sock,
                                                                      backlog=self._backlog)


@dataclass
class Server:
    runner: web.AppRunner
    host: str
    port: int
    peers: PeerManager | None
    avatars: AvatarStore
    token: str | None = None
    site: CappedSite | None = None
    preps: Preparer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        if self.preps is not None:
            self.preps.shutdown()
        if self.peers is not None:
            await self.peers.shutdown()
        await self.runner.cleanup()
        await asyncio.to_thread(self.avatars.cleanup)


@dataclass
class ServerParts:
    """What a server serves besides its ServeConfig, built by whoever starts it."""
    make_reenactor: Callable | None = None   # avatar -> a session of the engine (one per WebRTC peer)
    pipeline: object | None = None           # the server's own stream, which peers may watch
    controller: Controller | None = None     # the HTTP controls of that stream
    default_avatar: str | Path | None = None
    side_by_side: bool | None = None
    status: Callable[[], dict] | None = None   # the stream's figures for /status
    prepare: Callable | None = None          # (path, report) -> loads or enrolls an avatar (streamer.avatar.preparing)
    max_connections: int | None = None       # open HTTP connections at most (None: from max_peers)


async def start_server(cfg: ServeConfig, parts: ServerParts) -> Server:
    """Bind (port 0: any free port), then serve. Errors binding -> UserError. The default avatar's
    preparation starts here."""
    host, port, max_peers = cfg.host, cfg.port, cfg.max_peers
    token = normalize_token(cfg.token)
    check_bind(host, token)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        why = getattr(e, "strerror", None) or str(e)
        raise UserError(f"cannot listen on {host}:{port} ({why}); pick another --port") from None
    port = sock.getsockname()[1]
    peers = PeerManager(parts.make_reenactor, default_avatar=parts.default_avatar, server=parts.pipeline,
                        max_peers=max_peers, side_by_side=parts.side_by_side) if cfg.webrtc else None
    avatars = AvatarStore()
    preps = Preparer(parts.prepare if cfg.webrtc else None)
    if parts.default_avatar is not None:
        preps.start("default", parts.default_avatar, Path(parts.default_avatar).name)
    app = create_app(peers=peers, controller=parts.controller, token=token, port=port, avatars=avatars,
                     status=parts.status or (lambda: {}), preps=preps)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_S)
    await runner.setup()
    site = CappedSite(runner, sock, parts.max_connections or max(MAX_CONNECTIONS, 6 * max_peers))
    await site.start()
    return Server(runner, host, port, peers, avatars, token, site, preps)
