"""Avatar packs on their way to replicas (streamer.cluster.packs): named by their sha256 and checked
against it on arrival, whichever way they came (the pack store, a shared folder); the store checks the
cluster token. No ray needed: these are the parts a replica and a front-end run around Ray."""
import hashlib

import numpy as np
import pytest
import torch

from engines.core.errors import UserError
from streamer.avatar.pack import AvatarPack
from streamer.cluster.packs import (PackStore, Unauthorized, load_checked, pack_bytes, pack_id, put_shared,
                                    read_shared)

TOKEN = "a-cluster-token-of-some-length"


def small_pack(seed: int) -> AvatarPack:
    g = torch.Generator().manual_seed(seed)
    return AvatarPack("default", torch.randn(1, 100, generator=g), {}, np.full((64, 64, 3), seed, np.uint8),
                      np.full((256, 256, 3), seed, np.uint8), {"p": [0.1 * seed] * 13})


def test_a_pack_is_named_by_its_bytes_and_loads_only_if_they_match():
    a, b = pack_bytes(small_pack(1)), pack_bytes(small_pack(2))
    assert pack_id(a) == hashlib.sha256(a).hexdigest() != pack_id(b)
    pack = load_checked(a, pack_id(a))
    assert torch.equal(pack.latent, small_pack(1).latent) and pack.meta["p"] == small_pack(1).meta["p"]
    with pytest.raises(UserError, match="refused"):
        load_checked(b, pack_id(a))                # another avatar's bytes under this id
    damaged = bytearray(a)
    damaged[len(a) // 2] ^= 1
    with pytest.raises(UserError, match="refused"):
        load_checked(bytes(damaged), pack_id(a))   # one bit changed on the way


def test_pack_store_needs_the_token_and_the_right_bytes():
    store = PackStore(TOKEN, kept=2)
    data = [pack_bytes(small_pack(i)) for i in range(3)]
    ids = [pack_id(d) for d in data]
    with pytest.raises(Unauthorized):
        store.put("wrong-token-wrong-token", ids[0], data[0])
    with pytest.raises(Unauthorized):
        store.get(None, ids[0])
    with pytest.raises(ValueError, match="hash to something else"):
        store.put(TOKEN, ids[0], data[1])
    for i, d in zip(ids, data):
        store.put(TOKEN, i, d)
    assert store.count(TOKEN) == 2 and not store.has(TOKEN, ids[0])   # the newest two are kept
    assert store.get(TOKEN, ids[2]) == data[2]
    with pytest.raises(KeyError):
        store.get(TOKEN, ids[0])


def test_shared_folder_round_trip_is_hash_checked(tmp_path):
    data = pack_bytes(small_pack(3))
    aid = pack_id(data)
    assert read_shared(tmp_path, aid) is None
    put_shared(tmp_path, aid, data)
    assert (tmp_path / f"{aid}.avatar").is_file() and not list(tmp_path.glob("*.tmp"))
    assert torch.equal(load_checked(read_shared(tmp_path, aid), aid).latent, small_pack(3).latent)
    (tmp_path / f"{aid}.avatar").write_bytes(pack_bytes(small_pack(4)))   # replaced by someone else
    with pytest.raises(UserError, match="refused"):
        load_checked(read_shared(tmp_path, aid), aid)
    with pytest.raises(UserError, match="not an avatar id"):
        read_shared(tmp_path, "../../etc/passwd")


def test_remote_stage_reads_and_hashes_a_pack_once_for_all_its_sessions(monkeypatch):
    """A front-end's sessions of one avatar share its pack's bytes and id (a pack is a few MB to read
    and hash); another pack gets its own."""
    import streamer.cluster.client as client_mod

    class Client:
        def __init__(self):
            self.ensured = []

        def ensure(self, aid, data, force=False):
            self.ensured.append((aid, data))
    reads = []
    real = client_mod.pack_bytes
    monkeypatch.setattr(client_mod, "pack_bytes", lambda pack: reads.append(pack) or real(pack))
    stage = client_mod.RemoteGeneratorStage(Client())
    one, two = small_pack(1), small_pack(2)
    slots = [stage.add_avatar(one), stage.add_avatar(one), stage.add_avatar(two)]
    assert len(reads) == 2 and len(set(slots)) == 3
    assert stage.avatar_id(slots[0]) == stage.avatar_id(slots[1]) == pack_id(real(one))
    assert stage.avatar_id(slots[2]) == pack_id(real(two)) != stage.avatar_id(slots[0])
    assert [aid for aid, _ in stage.client.ensured] == [stage.avatar_id(s) for s in slots]   # each session checks
