"""Reproducible training of the demo's digits classifier (``digits_classifier.safetensors``).

The classifier's penultimate features are the space in which the demo measures the Fréchet distance of
generated digits to real ones (see ``classifier.py``). Data: scikit-learn's 1797 digits, preprocessed
like the diffusion model's (``model.digits_to_images``: x / 16 · 2 − 1, bilinear 8×8 → 16×16). A seeded
permutation holds out ``--heldout`` of them; the classifier trains on the rest, with cross-entropy,
Adam and a cosine learning-rate decay, and the held-out digits (their raw 8×8 values, labels and indices
in ``load_digits()``) are stored in the file next to the weights: they are the Fréchet distance's
reference set and the accuracy check. The diffusion model was trained on all 1797 digits, so the
reference is held out from the classifier only (``MODEL_CARD.md`` says what that means).

Usage (the repository importable as ``comfyui_dyweight``)::

    python -m comfyui_dyweight.demo.train_classifier --out demo/digits_classifier.safetensors

or, to check that a file (by default the shipped one) is what this script trains, tensor for tensor::

    python -m comfyui_dyweight.demo.train_classifier --check demo/digits_classifier.safetensors

Needs torch, safetensors, numpy and scikit-learn. CPU, one thread, deterministic algorithms: two runs
with the same torch version, thread count and CPU instruction set give bit-identical tensors and the
same metadata (no dates or timings; safetensors may order the metadata differently in the header, so
compare with ``--check``, not with ``sha256sum``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save

from ..atomic import write_bytes_atomic
from .classifier import (DEFAULT_CHANNELS, DEFAULT_CLASSIFIER, DEFAULT_FEATURES, HELDOUT_DIGITS, HELDOUT_INDICES, HELDOUT_LABELS,
                         DigitsClassifier)
from .model import digits_to_images


def split_digits(count: int, heldout: int, seed: int) -> tuple:
    """``(train_indices, heldout_indices)``, each sorted: a seeded permutation's first ``heldout`` are held out."""
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return permutation[heldout:].sort().values, permutation[:heldout].sort().values


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, lr: float, seed: int,
          channels=DEFAULT_CHANNELS, features: int = DEFAULT_FEATURES) -> DigitsClassifier:
    """Cross-entropy, Adam, cosine decay from ``lr`` to 0, epoch-wise shuffling; deterministic for a seed."""
    torch.manual_seed(seed)
    network = DigitsClassifier(channels, features).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    steps_per_epoch = -(-len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(network(images[batch]), labels[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return network.eval()


@torch.no_grad()
def accuracy(network: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((network(images).argmax(dim=1) == labels).double().mean())


def check(path, tensors: dict, metadata: dict) -> int:
    """0 when ``path`` holds bit-identical ``tensors`` and the same ``metadata``, else 1 (differences printed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    stored = load_file(path)
    with safe_open(path, framework="pt") as handle:
        stored_metadata = handle.metadata() or {}
    differences = [f"tensor {name}" for name in sorted(set(stored) | set(tensors))
                   if name not in stored or name not in tensors or stored[name].dtype != tensors[name].dtype
                   or not torch.equal(stored[name], tensors[name])]
    differences += [f"metadata {key}: {stored_metadata.get(key)!r} in the file, {metadata.get(key)!r} now"
                    for key in sorted(set(stored_metadata) | set(metadata)) if stored_metadata.get(key) != metadata.get(key)]
    for difference in differences:
        print(f"differs: {difference}")
    print(f"{path}: {'reproduced bit for bit' if not differences else f'{len(differences)} difference(s)'}")
    return 1 if differences else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_CLASSIFIER, help="output file (default: the shipped one)")
    parser.add_argument("--check", metavar="FILE",
                        help="write nothing; exit 1 unless FILE holds exactly the tensors and metadata trained now")
    parser.add_argument("--heldout", type=int, default=600, help="digits held out as the reference set (default 600)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out permutation (default 0)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (byte-identical output only for the same value; default 1)")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    torch.use_deterministic_algorithms(True)

    from sklearn.datasets import load_digits  # training-time dependency only

    digits = load_digits()
    values = torch.as_tensor(digits.images).round().to(torch.uint8)  # (1797, 8, 8), integers 0..16
    labels = torch.as_tensor(digits.target).long()
    train_indices, heldout_indices = split_digits(len(values), arguments.heldout, arguments.split_seed)
    images = digits_to_images(values)
    network = train(images[train_indices], labels[train_indices], arguments.epochs, arguments.batch_size,
                    arguments.lr, arguments.seed)
    train_accuracy = accuracy(network, images[train_indices], labels[train_indices])
    heldout_accuracy = accuracy(network, images[heldout_indices], labels[heldout_indices])
    print(f"trained on {len(train_indices)} digits: accuracy {train_accuracy:.4f} on them, "
          f"{heldout_accuracy:.4f} on the {len(heldout_indices)} held out")

    tensors = {f"network.{name}": value.detach().contiguous() for name, value in network.state_dict().items()}
    tensors.update({HELDOUT_DIGITS: values[heldout_indices].contiguous(),
                    HELDOUT_LABELS: labels[heldout_indices].to(torch.uint8),
                    HELDOUT_INDICES: heldout_indices.to(torch.int32)})
    metadata = {
        "format": "pt",
        "model": "ComfyUI-DyWeight demo: digits classifier whose penultimate features give the Fréchet distance",
        "channels": json.dumps(list(DEFAULT_CHANNELS)), "features": str(DEFAULT_FEATURES),
        "dataset": "sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, CC BY 4.0)",
        "preprocessing": "x/16*2-1, bilinear upsample 8x8->16x16 (align_corners=False)",
        "split": f"torch.randperm(1797, seed {arguments.split_seed}): first {arguments.heldout} held out "
                 f"(tensors heldout.*), the rest trains the classifier",
        "train_digits": str(len(train_indices)), "heldout_digits": str(len(heldout_indices)),
        "epochs": str(arguments.epochs), "batch_size": str(arguments.batch_size), "lr": repr(arguments.lr),
        "seed": str(arguments.seed), "threads": str(arguments.threads),
        "train_accuracy": f"{train_accuracy:.4f}", "heldout_accuracy": f"{heldout_accuracy:.4f}",
        "torch_version": torch.__version__, "python_version": platform.python_version(),
    }
    if arguments.check:
        return check(arguments.check, tensors, metadata)
    write_bytes_atomic(arguments.out, save(tensors, metadata=metadata))
    print(f"wrote {arguments.out} ({os.path.getsize(arguments.out) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
