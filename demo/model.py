"""Tiny pixel-space EDM diffusion model of handwritten digits (demo model).

The network is a small convolutional U-Net on 1x16x16 images in [-1, 1]
(scikit-learn's 8x8 digits, bilinearly upsampled to 16x16 at data-preparation
time; see ``train_model.py`` and ``MODEL_CARD.md``).  It is wrapped in the EDM
preconditioning of Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1):

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x; c_noise(sigma))

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Runtime dependencies: torch and safetensors only (weights are never pickled).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_WEIGHTS",
    "TinyUNet",
    "EDMDenoiser",
    "build_denoiser",
    "digits_to_images",
    "load_demo_model",
]

#: Path of the shipped weights (next to this file).
DEFAULT_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_edm.safetensors")

#: Architecture / preconditioning hyper-parameters used for the shipped weights.
#: The authoritative copy is the ``config`` entry of the safetensors metadata.
DEFAULT_CONFIG: Dict[str, Any] = {
    "image_channels": 1,
    "image_size": 16,
    "patch_size": 2,
    "base_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "emb_dim": 128,
    "fourier_dim": 32,
    "sigma_data": 0.6,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
}


def digits_to_images(values: torch.Tensor, image_size: int = 16) -> torch.Tensor:
    """scikit-learn digit values (N, 8, 8), integers 0..16 -> float32 (N, 1, image_size, image_size) in [-1, 1].

    ``x / 16 * 2 - 1``, then bilinear upsampling (``align_corners=False``): the preprocessing of the
    diffusion model's training data and of the classifier behind the demo's Fréchet distance.
    """
    x = torch.as_tensor(values).to(torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0).contiguous()


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class FourierEmbedding(nn.Module):
    """Fixed sinusoidal features of the scalar noise label c_noise = ln(sigma)/4."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        # Angular frequencies pi * 2^k, k in [-3, 4]: covers c_noise in ~[-1.6, 1.1].
        freqs = math.pi * torch.pow(2.0, torch.linspace(-3.0, 4.0, half))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([a.cos(), a.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv residual block with FiLM (scale/shift) noise conditioning."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """Small conv U-Net F(x_in, c_noise) -> same shape as x_in.

    With ``patch_size`` p > 1 the input is first rearranged losslessly by
    ``pixel_unshuffle`` (C, H, W) -> (C*p*p, H/p, W/p) and the output is put
    back with ``pixel_shuffle``; this keeps 16x16 outputs at 8x8 compute cost.
    """

    def __init__(
        self,
        image_channels: int = 1,
        patch_size: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        emb_dim: int = 128,
        fourier_dim: int = 32,
        **_unused: Any,
    ):
        super().__init__()
        chs = [base_channels * m for m in channel_mult]
        self.patch_size = int(patch_size)
        io_ch = image_channels * self.patch_size ** 2
        self.fourier = FourierEmbedding(fourier_dim)
        self.emb_mlp = nn.Sequential(
            nn.Linear(fourier_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )
        self.conv_in = nn.Conv2d(io_ch, chs[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_chs = []
        cur = chs[0]
        for i, ch in enumerate(chs):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cur, ch, emb_dim))
                cur = ch
            self.down_blocks.append(blocks)
            skip_chs.append(cur)
            if i < len(chs) - 1:
                self.downsamples.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))

        self.mid1 = ResBlock(cur, cur, emb_dim)
        self.mid2 = ResBlock(cur, cur, emb_dim)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(chs))):
            ch = chs[i]
            blocks = nn.ModuleList()
            blocks.append(ResBlock(cur + skip_chs[i], ch, emb_dim))
            cur = ch
            for _ in range(num_res_blocks - 1):
                blocks.append(ResBlock(cur, ch, emb_dim))
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsamples.append(nn.Conv2d(cur, chs[i - 1], 3, padding=1))
                cur = chs[i - 1]

        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, io_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.emb_mlp(self.fourier(c_noise))
        if self.patch_size > 1:  # lossless space-to-depth: run the U-Net at (H/p, W/p)
            x = F.pixel_unshuffle(x, self.patch_size)
        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid2(self.mid1(h, emb), emb)
        for j, blocks in enumerate(self.up_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
            if j < len(self.upsamples):
                h = self.upsamples[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        if self.patch_size > 1:
            out = F.pixel_shuffle(out, self.patch_size)
        return out


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser: ``forward(x, sigma) -> x0`` estimate.

    ``x``: (B, C, H, W) noisy images ``x0 + sigma * eps`` (data in [-1, 1]).
    ``sigma``: python float, 0-d tensor, or tensor with B elements (e.g. (B,) or
    (B, 1, 1, 1)).  ``sigma == 0`` returns ``x`` unchanged.
    """

    def __init__(self, net: nn.Module, sigma_data: float, sigma_min: float, sigma_max: float,
                 image_shape: Tuple[int, int, int], config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.config = dict(config or {})
        self.metadata: Dict[str, str] = {}

    def preconditioning(self, sigma: torch.Tensor):
        sd = self.sigma_data
        s2 = sigma * sigma + sd * sd
        c_skip = sd * sd / s2
        c_out = sigma * sd / s2.sqrt()
        c_in = 1.0 / s2.sqrt()
        c_noise = sigma.clamp_min(1e-20).log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        elif sigma.numel() != b:
            raise ValueError(f"sigma has {sigma.numel()} elements, expected 1 or {b}")
        s = sigma.reshape(b, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.preconditioning(s)
        xf = x.to(torch.float32)
        net_dtype = self.net.conv_in.weight.dtype
        f = self.net((c_in * xf).to(net_dtype), c_noise.reshape(b)).to(torch.float32)
        return (c_skip * xf + c_out * f).to(x.dtype)


def build_denoiser(config: Optional[Dict[str, Any]] = None) -> EDMDenoiser:
    """Construct an (untrained) EDMDenoiser from a config dict (see DEFAULT_CONFIG)."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    net = TinyUNet(
        image_channels=cfg["image_channels"],
        patch_size=cfg.get("patch_size", 1),
        base_channels=cfg["base_channels"],
        channel_mult=tuple(cfg["channel_mult"]),
        num_res_blocks=cfg["num_res_blocks"],
        emb_dim=cfg["emb_dim"],
        fourier_dim=cfg["fourier_dim"],
    )
    shape = (cfg["image_channels"], cfg["image_size"], cfg["image_size"])
    return EDMDenoiser(net, cfg["sigma_data"], cfg["sigma_min"], cfg["sigma_max"], shape, cfg)


def load_demo_model(path: Optional[str] = None, device="cpu", dtype: torch.dtype = torch.float32) -> EDMDenoiser:
    """Load the shipped (or a given) safetensors checkpoint; returns an eval-mode EDMDenoiser."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path) if path is not None else DEFAULT_WEIGHTS
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
    cfg = json.loads(meta["config"]) if "config" in meta else {}
    model = build_denoiser(cfg)
    state = load_file(path, device="cpu")
    state = {k: v.to(torch.float32) for k, v in state.items()}
    model.net.load_state_dict(state, strict=True)
    model.metadata = meta
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
