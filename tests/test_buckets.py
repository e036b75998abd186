"""engines.accel.buckets: batches padded to fixed sizes for static-shape engines, outputs cut back.
On this CPU the chain ("cuda-graph", "eager") builds eager engines, but through the same padding,
per-bucket building and verification a GPU takes."""
import torch

from engines.accel.avatar_batch import AvatarBank, DCGANBatch
from engines.accel.buckets import Buckets, cut, mirror
from engines.method.default_zoo import RECIPE
from engines.models.dcgan import DCGAN


class RowSum(torch.nn.Module):
    """Each row's output depends on that row only (as a batched network's should)."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x, slot):
        self.calls.append(x.shape[0])
        return {"y": x.sum(dim=(1, 2, 3)) + slot, "x": x * 2}


def test_batches_are_padded_to_a_bucket_and_cut_back():
    m = RowSum()
    run = Buckets(m, torch.device("cpu"), "rowsum", prefer=("cuda-graph", "eager"), buckets=(1, 2, 4), log=None)
    assert run.static
    x = torch.randn(3, 2, 4, 4)
    slot = torch.tensor([0, 1, 2])
    out = run(x, slot)
    assert out["y"].shape == (3,) and out["x"].shape == (3, 2, 4, 4)
    torch.testing.assert_close(out["y"], x.sum(dim=(1, 2, 3)) + slot)
    assert 4 in m.calls and 3 not in m.calls           # the module only ever saw the bucket's size
    run(torch.randn(3, 2, 4, 4), slot)                  # same bucket: no new engine
    run(torch.randn(1, 2, 4, 4), slot[:1])
    assert [k[0][0][0] for k in run.engines] == [4, 1]
    assert all("eager" in line for line in run.built.values())   # no CUDA here: the chain's last step
    big = run(torch.randn(6, 2, 4, 4), torch.arange(6))   # past the largest bucket: eagerly, whole
    assert big["y"].shape == (6,) and len(run.engines) == 2


def test_the_cpu_chain_runs_the_module_unpadded():
    m = RowSum()
    run = Buckets(m, torch.device("cpu"), "rowsum", log=None)
    assert not run.static
    run(torch.randn(3, 2, 4, 4), torch.zeros(3))
    assert m.calls == [3] and not run.engines


def test_a_padded_avatar_batch_renders_what_each_avatar_renders_alone():
    g = DCGAN.from_checkpoint()
    bank = AvatarBank(g, RECIPE.tuning.layers, slots=3)
    gen = torch.Generator().manual_seed(3)
    for s in (1, 2):
        bank.set(s, {n: p + 0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen)
                     for n, p in g.named_parameters() if n.startswith(RECIPE.tuning.layers)})
    batch = DCGANBatch(g, bank)
    run = Buckets(batch, torch.device("cpu"), "generator", prefer=("cuda-graph", "eager"), log=None)
    z = torch.randn(3, 100, generator=gen)
    slot = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = run(z, slot)
        for i in range(3):
            torch.testing.assert_close(out[i:i + 1], batch(z[i:i + 1], slot[i:i + 1]), atol=1e-4, rtol=0)


def test_mirror_and_cut():
    img = torch.arange(8.0).reshape(1, 1, 2, 4)
    assert torch.equal(mirror(img)[0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert torch.equal(mirror(torch.tensor([1, 2, 3])), torch.tensor([3, 2, 1]))
    out = cut((torch.zeros(4, 2), [torch.ones(4)], {"a": torch.zeros(4, 1)}), 2)
    assert out[0].shape == (2, 2) and out[1][0].shape == (2,) and out[2]["a"].shape == (2, 1)


def test_engines_are_built_and_checked_on_the_real_batch_and_its_mirror(monkeypatch):
    """A face's error says whether an engine is good enough, a noise input's does not (the landmark
    net's presence flips under rounding on noise): each bucket's engine is verified on the first real
    batch, padded, and on its mirror image."""
    import engines.accel.buckets as eb
    seen = {}

    def fake_build(module, example, device, prefer, check_inputs, name, log):
        seen.update(example=example, checks=check_inputs, name=name)
        return module, type("Info", (), {"line": lambda self: "engine: stand-in"})()

    monkeypatch.setattr(eb, "build_engine", fake_build)
    run = Buckets(RowSum(), torch.device("cpu"), "rowsum", prefer=("cuda-graph", "eager"), buckets=(4,), log=None)
    x = torch.randn(3, 2, 4, 4)
    run(x, torch.tensor([5, 6, 7]))
    real, mirrored = seen["checks"]
    assert torch.equal(real[0][:3], x) and torch.equal(real[0][3], x[2])        # padded with the last row
    assert torch.equal(mirrored[0], real[0].flip(-1))                          # images flipped left-right
    assert torch.equal(mirrored[1], torch.tensor([7, 7, 6, 5]))                # other inputs reversed
    assert torch.equal(seen["example"][0], real[0]) and seen["name"] == "rowsum b4"
