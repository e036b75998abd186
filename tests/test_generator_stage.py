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
            assert torch.equal(a, ref)                        # batch 1: the avatar's own tuned G exactly
            assert (a - b).abs().max() < 1e-4                 # the bank's gathered weights: same image
        assert not torch.allclose(alone[0], alone[1], atol=1e-3)   # and the avatars differ
    finally:
        one.close()
        many.close()


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
