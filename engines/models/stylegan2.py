"""StyleGAN2 generator in the rosinality layout (the paper's G: 256 px, channel multiplier 1, VoxCeleb).

`StyleGAN2.from_checkpoint(path)` reads a rosinality `.pt` (dict with `g_ema`, optional `latent_avg`) of
any size and channel multiplier; the layer widths are read from the weights themselves. Images use the
checkpoint's fixed noise buffers (`noises.noise_i`): per-frame random noise flickers in video.

W+ layout (n_latent = 2*log2(size) - 2 layers of 512): conv1 uses w[:,0], to_rgb1 w[:,1]; per
resolution i = 1, 3, 5, ...: up-conv w[:,i], conv w[:,i+1], ToRGB w[:,i+2].
Outputs are the raw generator values (about [-1, 1] for a trained G; not clamped, so they compare
exactly with the official code).
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from engines.core.errors import UserError
from engines.core.statedict import assign_state_dict, build_on_meta
from engines.core.weights_io import read_checkpoint, require_dict
from engines.models.generator import LatentGenerator
from engines.models.stylegan2_ops import ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB, make_fir_kernel

LAYOUT = ("rosinality StyleGAN2 .pt: {'g_ema': state dict with style.*, input.input, conv1.*, to_rgb1.*, "
          "convs.N.*, to_rgbs.N.*, noises.noise_N}, optional 'latent_avg' [512]")
BLUR = (1, 3, 3, 1)


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {r: (c if r <= 32 else c * channel_multiplier) for r, c in base.items() if r <= size}


class StyleGAN2(LatentGenerator):
    def __init__(self, size: int = 256, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: int = 1, channels: dict[int, int] | None = None, lr_mlp: float = 0.01):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"StyleGAN2 size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channels = dict(channels) if channels else default_channels(size, channel_multiplier)
        self.channel_multiplier = channel_multiplier
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        self.latent_shape = (self.n_latent, style_dim)
        self.resolution = size

        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                  for _ in range(n_mlp)])
        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_taps=BLUR)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch[4]
        for i in range(3, log_size + 1):
            out_ch = ch[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_taps=BLUR))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_taps=BLUR))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch
        self.register_buffer("latent_avg", None, persistent=False)
        self.conv_mode = "grouped"

    # -- modulated-conv form ----------------------------------------------------------------
    def set_conv_mode(self, mode: str) -> "StyleGAN2":
        """'grouped' (official: per-sample weights, grouped conv) or 'shared' (modulate activations,
        demodulate outputs around one shared-weight conv; batches better on GPU). Same maths."""
        if mode not in ("grouped", "shared"):
            raise ValueError(f"conv mode must be 'grouped' or 'shared', not {mode!r}")
        for m in self.modules():
            if hasattr(m, "grouped") and hasattr(m, "modulation"):
                m.grouped = mode == "grouped"
        self.conv_mode = mode
        return self

    # -- mapping ----------------------------------------------------------------------------
    def map(self, z: torch.Tensor, truncation: float = 1.0, mean: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, 512] -> w [B, 512]; truncation < 1 pulls w toward `mean` (default: the file's latent_avg)."""
        w = self.style(z)
        if truncation != 1.0:
            if mean is None:
                mean = self.latent_avg
            if mean is None:
                raise ValueError("truncation needs a mean latent: pass mean= (e.g. mean_latent(4096))")
            mean = mean.reshape(1, -1).to(w)
            w = mean + truncation * (w - mean)
        return w

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean of n mapped random z, [1, 512] (the official truncation centre, mean_latent(4096))."""
        dev = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.style_dim, generator=generator, device=dev)
        p = next(self.parameters())
        return self.style(z.to(p.device, p.dtype)).mean(0, keepdim=True)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.style_dim, generator=generator, device=dev)
        p = next(self.parameters())
        w = self.map(z.to(p.device, p.dtype))
        return w[:, None, :].expand(-1, self.n_latent, -1).contiguous()

    # -- synthesis --------------------------------------------------------------------------
    def synthesize(self, latent: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """W+ [B, n_latent, 512] -> image [B, 3, size, size]. `trace`, if a dict, receives the
        intermediates named as in the fixtures (conv1_out, skip_res<R>, convs.<i>_out, style_<layer>)."""
        if latent.ndim != 3 or tuple(latent.shape[1:]) != self.latent_shape:
            raise ValueError(f"expected W+ latents [B, {self.n_latent}, {self.style_dim}], got {tuple(latent.shape)}")
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        w = latent
        if trace is not None:
            self._trace_styles(w, trace)
        out = self.input(w.shape[0])
        out = self.conv1(out, w[:, 0], noise[0])
        skip = self.to_rgb1(out, w[:, 1])
        if trace is not None:
            trace["conv1_out"], trace["skip_res4"] = out, skip
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            up, conv = self.convs[2 * j], self.convs[2 * j + 1]
            out = up(out, w[:, i], noise[i])
            if trace is not None:
                trace[f"convs.{2 * j}_out"] = out
            out = conv(out, w[:, i + 1], noise[i + 1])
            if trace is not None:
                trace[f"convs.{2 * j + 1}_out"] = out
            skip = to_rgb(out, w[:, i + 2], skip)
            if trace is not None:
                trace[f"skip_res{2 ** (j + 3)}"] = skip
            i += 2
        return skip

    def _trace_styles(self, w, trace):
        trace["style_conv1"] = self.conv1.conv.modulation(w[:, 0])
        trace["style_to_rgb1"] = self.to_rgb1.conv.modulation(w[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            trace[f"style_convs.{2 * j}"] = self.convs[2 * j].conv.modulation(w[:, i])
            trace[f"style_convs.{2 * j + 1}"] = self.convs[2 * j + 1].conv.modulation(w[:, i + 1])
            trace[f"style_to_rgbs.{j}"] = to_rgb.conv.modulation(w[:, i + 2])

    def generate(self, z: torch.Tensor, truncation: float = 1.0, mean: torch.Tensor | None = None):
        """z [B, 512] -> image, one w broadcast to every layer (rosinality g([z]))."""
        w = self.map(z, truncation, mean)
        return self.synthesize(w[:, None, :].expand(-1, self.n_latent, -1))

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: dict, latent_avg: torch.Tensor | None = None, path: str | Path = "<memory>",
                        conv_mode: str = "grouped") -> "StyleGAN2":
        arch = infer_architecture(sd, path)
        model = build_on_meta(lambda: cls(**arch))
        missing_noise = [k for k in model.state_dict() if k.startswith("noises.") and k not in sd]
        defaults = standard_buffers(model, seed=0)
        if missing_noise:
            warnings.warn(f"{path}: no fixed noise buffers in g_ema ({len(missing_noise)} missing); using "
                          "seeded random noise (seed 0) instead", stacklevel=3)
        assign_state_dict(model, sd, path=path, what="StyleGAN2 g_ema", layout=LAYOUT,
                          optional=lambda k: k.startswith("noises.") or k.endswith(".kernel"),
                          defaults=defaults)
        if latent_avg is not None:
            la = torch.as_tensor(latent_avg).float().reshape(-1)
            if la.numel() != arch["style_dim"]:
                raise UserError(f"{path}: latent_avg has {la.numel()} values, expected {arch['style_dim']}")
            model.latent_avg = la
        model.set_conv_mode(conv_mode)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, conv_mode: str = "grouped") -> "StyleGAN2":
        path = Path(path)
        ckpt = require_dict(read_checkpoint(path, "StyleGAN2 generator"), path, "StyleGAN2 generator", LAYOUT)
        if "g_ema" not in ckpt:
            hint = (" (looks like an e4e/pSp checkpoint: pass the generator file)" if "state_dict" in ckpt or "e" in ckpt
                    else "")
            raise UserError(f"{path}: no 'g_ema' entry; expected {LAYOUT}{hint}")
        return cls.from_state_dict(ckpt["g_ema"], ckpt.get("latent_avg"), path, conv_mode)


def standard_buffers(model: "StyleGAN2", seed: int = 0) -> dict[str, torch.Tensor]:
    """Values for buffers an older checkpoint may lack: FIR kernels (fixed by construction) and noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("conv.blur.kernel") or k.endswith("upsample.kernel"):
            out[k] = make_fir_kernel(BLUR, 4.0)
        elif k.startswith("noises."):
            out[k] = torch.randn(tuple(v.shape), generator=g)
    return out


def infer_architecture(sd, path) -> dict:
    """Size, widths and mapping depth from the g_ema tensors (any size / channel multiplier)."""
    if not isinstance(sd, dict):
        raise UserError(f"{path}: 'g_ema' is not a state dict; expected {LAYOUT}")
    try:
        n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
        style_dim = int(sd["style.1.weight"].shape[1])
        n_rgbs = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        channels = {4: int(sd["conv1.conv.weight"].shape[1])}
        for j in range(n_rgbs):
            channels[2 ** (j + 3)] = int(sd[f"convs.{2 * j}.conv.weight"].shape[1])
    except (KeyError, IndexError, AttributeError) as e:
        raise UserError(f"{path}: 'g_ema' lacks {e} or has odd shapes; expected {LAYOUT}") from None
    if n_mlp == 0 or n_rgbs == 0:
        raise UserError(f"{path}: 'g_ema' has no mapping layers or no synthesis blocks; expected {LAYOUT}")
    size = 2 ** (n_rgbs + 2)
    cm = channels[64] // 256 if 64 in channels and channels[64] % 256 == 0 else 1
    return dict(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=max(cm, 1), channels=channels)
