"""Avatar packs on their way to replicas: named by their hash, checked against it on arrival.

The front-end uploads a pack's file bytes to the pack store (a small Ray actor; the bytes travel through
Ray's object store) under their sha256, which is also the avatar's Serve model id; or, with a shared
folder (`pack_dir`, e.g. an NFS or a Kubernetes volume every node mounts), writes them there as
ID.avatar. A replica that is
asked for an avatar it has not loaded fetches the bytes by that id, checks that they hash to it, and
loads them with the product's own loader (AvatarPack.load: safetensors, contents checked; nothing is
unpickled). The store keeps the newest STORE_KEPT packs.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import tempfile
from collections import OrderedDict
from pathlib import Path

from engines.core.errors import UserError
from streamer.avatar.pack import AvatarPack

STORE_KEPT = 64            # packs the store holds (default-zoo packs are 3-11 MB: at most ~0.7 GB)


def pack_bytes(pack: AvatarPack) -> bytes:
    """The bytes of the file `pack` was loaded from, or of the pack saved now (enrolled in memory)."""
    if pack.path is not None and Path(pack.path).is_file():
        return Path(pack.path).read_bytes()
    with tempfile.TemporaryDirectory(prefix="facereenact-pack-") as tmp:
        path = Path(tmp) / "pack.avatar"
        pack.save(path)
        return path.read_bytes()


def pack_id(data: bytes) -> str:
    """An avatar's id everywhere in the cluster: the sha256 of its pack file."""
    return hashlib.sha256(data).hexdigest()


def load_checked(data: bytes, avatar_id: str) -> AvatarPack:
    """The pack in `data`, if it hashes to `avatar_id` (else UserError: damaged or substituted on the way)."""
    got = pack_id(data)
    if not hmac.compare_digest(got, avatar_id):
        raise UserError(f"avatar pack {avatar_id[:12]}: the bytes received hash to {got[:12]}; refused")
    with tempfile.TemporaryDirectory(prefix="facereenact-pack-") as tmp:
        path = Path(tmp) / f"{avatar_id[:16]}.avatar"
        path.write_bytes(data)
        pack = AvatarPack.load(path)
    pack.path = None          # the file is gone; messages name the id instead
    return pack


def shared_path(pack_dir: str | Path, avatar_id: str) -> Path:
    if len(avatar_id) != 64 or any(c not in "0123456789abcdef" for c in avatar_id):
        raise UserError(f"not an avatar id: {avatar_id[:70]!r}")      # never a path of the caller's choosing
    return Path(pack_dir) / f"{avatar_id}.avatar"


def put_shared(pack_dir: str | Path, avatar_id: str, data: bytes) -> None:
    """Write a pack into the shared folder under its id (atomically; kept if it is there already)."""
    path = shared_path(pack_dir, avatar_id)
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_shared(pack_dir: str | Path, avatar_id: str) -> bytes | None:
    """The pack's bytes from the shared folder, or None when it is not there (load_checked checks them)."""
    try:
        return shared_path(pack_dir, avatar_id).read_bytes()
    except FileNotFoundError:
        return None


def token_ok(given: str | None, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


class Unauthorized(PermissionError):
    """A request without the cluster's token."""


def require_token(given: str | None, expected: str, who: str) -> None:
    """Unauthorized unless `given` is the cluster's token (every pack-store and replica call)."""
    if not token_ok(given, expected):
        raise Unauthorized(f"{who}: wrong or missing cluster token")


class PackStore:
    """The avatar packs the front-ends uploaded, by id (run as a Ray actor: streamer.cluster.client)."""

    def __init__(self, token: str, kept: int = STORE_KEPT):
        self._token, self._kept = token, kept
        self._packs: OrderedDict[str, bytes] = OrderedDict()

    def _check(self, token) -> None:
        require_token(token, self._token, "pack store")

    def has(self, token: str, avatar_id: str) -> bool:
        self._check(token)
        return avatar_id in self._packs

    def put(self, token: str, avatar_id: str, data: bytes) -> None:
        self._check(token)
        if pack_id(data) != avatar_id:
            raise ValueError(f"pack store: the bytes for {avatar_id[:12]} hash to something else; refused")
        self._packs[avatar_id] = data
        self._packs.move_to_end(avatar_id)
        while len(self._packs) > self._kept:
            self._packs.popitem(last=False)

    def get(self, token: str, avatar_id: str) -> bytes:
        self._check(token)
        data = self._packs.get(avatar_id)
        if data is None:
            raise KeyError(f"pack store: no avatar {avatar_id[:12]} (the front-end uploads it before use)")
        self._packs.move_to_end(avatar_id)
        return data

    def count(self, token: str) -> int:
        self._check(token)
        return len(self._packs)
