"""The one engine's shared generator stage: every session renders through it, and its batched form
(the GPU's: avatar bank, several sessions per call) renders what each avatar's own tuned G renders."""
import threading

import numpy as np
import pytest
import torch

from engines.method.default_zoo import RECIPE
from engines.models.dcgan import DCGAN
from streamer.avatar.pack import AvatarPack
from streamer.reenact.generator_stage import GeneratorStage
from tests.media import CLIP


def _pack(g, seed: int) -> AvatarPack:
    """A pack whose tuned layers are the base ones plus noise (what pivotal tuning changes)."""
    gen = torch.Generator().manual_seed(seed)
    tuned = {n: p.detach() + 0.02 * torch.randn(p.shape, generator=gen)
             for n, p in g.named_parameters() if n.startswith(RECIPE.tuning.layers)}
    crop = np.zeros((64, 64, 3), np.uint8)
    return AvatarPack("default", torch.randn(1, 100, generator=gen), tuned, crop, crop, {"p": [0.0] * 13})


def test_batched_stage_renders_each_avatar_like_its_own_generator():
    g = DCGAN.from_checkpoint()
    packs = [_pack(g, s) for s in (1, 2, 3)]
    one = GeneratorStage(g, RECIPE.tuning.layers, torch.device("cpu"), max_batch=1)
    many = GeneratorStage(g, RECIPE.tuning.layers, torch.device("cpu"), max_batch=4)
    try:
        slots_one = [one.add_avatar(p) for p in packs]
        slots_many = [many.add_avatar(p) for p in packs]
        z = torch.randn(3, 100, generator=torch.Generator().manual_seed(9))
        alone = [one.render(i, z[i:i + 1], s) for i, s in enumerate(slots_one)]
        together = many._run([(z[i:i + 1], s) for i, s in enumerate(slots_many)])   # one call, three avatars
        for i, (a, b, p) in enumerate(zip(alone, together, packs)):
            ref = p.generator(g).for_streaming().synthesize(z[i:i + 1])
            assert (a - ref).abs().max() < 1e-5               # batch 1: the avatar's own tuned G (ONNX Runtime)
            assert (a - b).abs().max() < 1e-4                 # the bank's gathered weights: same image
        assert not torch.allclose(alone[0], alone[1], atol=1e-3)   # and the avatars differ
    finally:
        one.close()
        many.close()


def _low_rank_pack(g, seed: int, rank: int) -> AvatarPack:
    """A pack as enrollment at Tuning.rank writes it: each tuned conv weight the base plus a rank-r
    delta (folded into plain weights), the other tuned tensors changed freely."""
    from engines.accel.lowrank import matrix_shape, worth_factoring
    gen = torch.Generator().manual_seed(seed)
    tuned = {}
    for n, p in g.named_parameters():
        if not n.startswith(RECIPE.tuning.layers):
            continue
        if p.dim() >= 4 and worth_factoring(p.shape, rank):
            rows, cols = matrix_shape(p.shape)
            u, v = torch.randn(rows, rank, generator=gen), torch.randn(rank, cols, generator=gen)
            delta = (u @ v).reshape(p.shape)
            tuned[n] = p.detach() + 0.02 * p.abs().mean() * delta / delta.std()
        else:
            tuned[n] = p.detach() + 0.02 * torch.randn(p.shape, generator=gen)
    crop = np.zeros((64, 64, 3), np.uint8)
    return AvatarPack("default", torch.randn(1, 100, generator=gen), tuned, crop, crop,
                      {"p": [0.0] * 13, "tuning": {"rank": rank}})


def test_a_low_rank_recipe_batches_shared_convs_and_renders_each_avatar_like_its_own_generator():
    """Tuning.rank > 0: the batched stage keeps each avatar's conv deltas as rank-r factors and runs
    one shared conv plus every sample's low-rank term; the images are each avatar's own G's."""
    from engines.accel.lowrank import LowRankBank
    from engines.core.errors import UserError
    g = DCGAN.from_checkpoint()
    packs = [_low_rank_pack(g, s, rank=8) for s in (4, 5, 6)]
    stage = GeneratorStage(g, RECIPE.tuning.layers, torch.device("cpu"), max_batch=4, rank=8)
    try:
        assert isinstance(stage.bank, LowRankBank) and stage.bank.factored   # convs held as factors
        slots = [stage.add_avatar(p) for p in packs]
        z = torch.randn(3, 100, generator=torch.Generator().manual_seed(11))
        together = stage._run([(z[i:i + 1], s) for i, s in enumerate(slots)])
        for i, p in enumerate(packs):
            ref = p.generator(g).synthesize(z[i:i + 1])
            assert (together[i] - ref).abs().max() < 1e-4
        assert not torch.allclose(together[0], together[1], atol=1e-3)
        full = _pack(g, 7)                                   # tuned at full rank: cutting it would change it
        full.meta["tuning"] = {"rank": 0}
        with pytest.raises(UserError, match="full rank"):
            stage.add_avatar(full)
    finally:
        stage.close()


@pytest.mark.slow
def test_sessions_of_one_engine_share_its_generator_stage(engine, tmp_path):
    """Three sessions (as three WebRTC peers) on one engine, each on its own thread: every frame goes
    through the one stage, and its statistics show the calls of all three."""
    import av

    from tests.media import quick_astronaut_pack
    pack = quick_astronaut_pack(engine.zoo, tmp_path)
    with av.open(str(CLIP)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(6), c.decode(video=0))]
    stats = engine.generator_stage.stats
    before = dict(stats.per_session)
    sessions = [engine.make_reenactor(pack) for _ in range(3)]
    assert len({s.slot for s in sessions}) == 3             # each its own avatar slot

    def drive(r):
        for k, f in enumerate(frames):
            r.process(f, k / 30)
    threads = [threading.Thread(target=drive, args=(r,)) for r in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = {s.session: stats.per_session.get(s.session, 0) - before.get(s.session, 0) for s in sessions}
    # each session: its own frames plus the renders it made when it loaded (avatar, correction)
    assert all(n >= len(frames) for n in served.values()), served
    for r in sessions:
        r.close()
