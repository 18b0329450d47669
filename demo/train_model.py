"""Reproducible training script for the embedded demo model (digits_edm.safetensors).

Trains the tiny EDM-preconditioned U-Net of ``model.py`` on scikit-learn's
handwritten digits (``sklearn.datasets.load_digits``: 1797 8x8 grayscale images,
values 0..16, a copy of the test part of the UCI "Optical Recognition of
Handwritten Digits" data set).

Preprocessing: x / 16 * 2 - 1 (-> [-1, 1]), then bilinear upsampling 8x8 -> 16x16
(``torch.nn.functional.interpolate``, align_corners=False).

Loss (Karras et al. 2022, "EDM"): sigma = exp(N(P_mean, P_std^2)),
    L = lambda(sigma) * || D(x0 + sigma * eps; sigma) - x0 ||^2,
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2,
averaged over pixels and batch; Adam, linear warm-up + cosine decay, EMA of the
weights (the EMA weights are what is saved).

Usage (from the repository's parent folder, the repo importable as
``comfyui_dyweight``)::

    python -m comfyui_dyweight.demo.train_model --out demo/digits_edm.safetensors

or directly as a file::

    python demo/train_model.py --out demo/digits_edm.safetensors

Needs torch, safetensors, numpy, scikit-learn and tqdm.  CPU only; the run is
deterministic for a given seed, torch version and thread count.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import sys
import time

import torch

if __package__:
    from .model import DEFAULT_CONFIG, build_denoiser, digits_to_images
else:  # run as a plain file: load the sibling model.py without needing the package
    import importlib.util as _ilu

    _spec = _ilu.spec_from_file_location(
        "_dyweight_demo_model", os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.py")
    )
    _mod = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    DEFAULT_CONFIG, build_denoiser, digits_to_images = _mod.DEFAULT_CONFIG, _mod.build_denoiser, _mod.digits_to_images


def load_digits_tensor(image_size: int = 16) -> torch.Tensor:
    """sklearn digits -> float32 tensor (1797, 1, image_size, image_size) in [-1, 1]."""
    from sklearn.datasets import load_digits  # training-time dependency only

    return digits_to_images(load_digits().images, image_size)  # (1797, 8, 8) float64, values 0..16


def edm_loss(model, x0: torch.Tensor, gen: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor:
    b = x0.shape[0]
    sigma = (torch.randn(b, generator=gen) * p_std + p_mean).exp()
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.reshape(b, 1, 1, 1)
    sd = model.sigma_data
    weight = (s ** 2 + sd ** 2) / (s * sd) ** 2
    d = model(x0 + s * noise, sigma)
    return (weight * (d - x0) ** 2).mean()


@torch.no_grad()
def eval_loss(model, data: torch.Tensor, seed: int, p_mean: float, p_std: float, repeats: int = 4) -> float:
    """EDM loss of `model` on the whole data set with fixed (seeded) noise."""
    gen = torch.Generator().manual_seed(seed + 12345)
    model.eval()
    tot, n = 0.0, 0
    for _ in range(repeats):
        for i in range(0, data.shape[0], 512):
            xb = data[i:i + 512]
            tot += edm_loss(model, xb, gen, p_mean, p_std).item() * xb.shape[0]
            n += xb.shape[0]
    return tot / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_edm.safetensors"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    ap.add_argument("--p-mean", type=float, default=-1.2)
    ap.add_argument("--p-std", type=float, default=1.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (results are bit-reproducible only for the same value)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    cfg = dict(DEFAULT_CONFIG)
    data = load_digits_tensor(cfg["image_size"])
    model = build_denoiser(cfg)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data {tuple(data.shape)}  params {n_params}  steps {args.steps}  batch {args.batch_size}", flush=True)

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(args.seed)
    n = data.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    recent = []
    try:
        from tqdm import tqdm
        bar = tqdm(range(args.steps), disable=args.no_progress, dynamic_ncols=True, mininterval=1.0)
    except ImportError:  # pragma: no cover
        bar = range(args.steps)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in bar:
        if pos + args.batch_size > n:  # epoch-wise shuffling without replacement
            perm, pos = torch.randperm(n, generator=gen), 0
        xb = data[perm[pos:pos + args.batch_size]]
        pos += args.batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = edm_loss(model, xb, gen, args.p_mean, args.p_std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        recent.append(loss.item())
        if len(recent) > 500:
            recent.pop(0)
        if hasattr(bar, "set_postfix") and step % 50 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_at(step):.1e}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    final_loss = sum(recent) / len(recent)
    ema_loss = eval_loss(ema, data, args.seed, args.p_mean, args.p_std)
    print(f"final training loss (mean of last {len(recent)} steps): {final_loss:.5f}")
    print(f"EMA-weights loss on the full data set (fixed noise): {ema_loss:.5f}")
    print(f"training wall time: {wall:.1f} s, process CPU time: {cpu:.1f} s ({args.threads} thread(s))")

    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in ema.net.state_dict().items()}
    meta = {
        "format": "pt",
        "model": "ComfyUI-DyWeight demo: EDM-preconditioned tiny U-Net, sklearn digits 16x16",
        "config": json.dumps(cfg, sort_keys=True),
        "sigma_data": repr(cfg["sigma_data"]),
        "sigma_min": repr(cfg["sigma_min"]),
        "sigma_max": repr(cfg["sigma_max"]),
        "image_shape": json.dumps([cfg["image_channels"], cfg["image_size"], cfg["image_size"]]),
        "value_range": "[-1, 1]",
        "dataset": "sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits), all 1797 images",
        "preprocessing": "x/16*2-1, bilinear upsample 8x8->16x16 (align_corners=False)",
        "weights": f"EMA (decay {args.ema})",
        "parameters": str(n_params),
        "train_steps": str(args.steps),
        "batch_size": str(args.batch_size),
        "lr": repr(args.lr),
        "p_mean": repr(args.p_mean),
        "p_std": repr(args.p_std),
        "seed": str(args.seed),
        "threads": str(args.threads),
        "final_loss": f"{final_loss:.6f}",
        "ema_eval_loss": f"{ema_loss:.6f}",
        "train_wall_time_s": f"{wall:.1f}",
        "train_cpu_time_s": f"{cpu:.1f}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + f".tmp{os.getpid()}"
    try:
        save_file(state, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # ordinary file mode, not the writer's 0600
        os.replace(tmp, out)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
