"""The demo's quality yardstick: a small digits classifier and the held-out real digits it did not see.

FID (Heusel et al. 2017) scores generated images by the Fréchet distance between their features and
those of real images, in the feature space of a classifier (Inception-v3's 2048-d pool layer for
ImageNet-sized pictures). The digits demo does the same at its own scale: a three-layer convolutional
classifier, trained by ``train_classifier.py`` on 16×16 digits preprocessed exactly like the diffusion
model's data, gives 64-d penultimate features (the hidden layer before the class scores), and
:meth:`DigitsFeatureSpace.frechet_distance` compares generated images with the held-out real digits that
are stored in the same file (``digits_classifier.safetensors``, see ``MODEL_CARD.md``). Runtime needs
torch, safetensors and numpy only.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from .metrics import frechet_distance
from .model import digits_to_images

#: Path of the shipped classifier and held-out digits (next to this file).
DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_classifier.safetensors")
#: Channels of the three convolutions, and the dimension of the penultimate features.
DEFAULT_CHANNELS, DEFAULT_FEATURES = (16, 32, 32), 64
#: Tensor names in the file besides the network's ``network.*`` parameters.
HELDOUT_DIGITS, HELDOUT_LABELS, HELDOUT_INDICES = "heldout.digits", "heldout.labels", "heldout.indices"


class DigitsClassifier(nn.Module):
    """conv3×3 → ReLU → conv3×3 stride 2 → ReLU → conv3×3 stride 2 → ReLU → linear → ReLU → linear.

    Input: (B, 1, 16, 16) images in [−1, 1]. ``features`` is everything before the last linear layer:
    (B, ``features``), the space of the Fréchet distance.
    """

    def __init__(self, channels=DEFAULT_CHANNELS, features: int = DEFAULT_FEATURES, classes: int = 10):
        super().__init__()
        layers, previous = [], 1
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, stride=1 if index == 0 else 2, padding=1), nn.ReLU()]
            previous = width
        side = 16 // 2 ** (len(channels) - 1)
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(previous * side * side, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsFeatureSpace:
    """The trained classifier plus the held-out real digits, as :func:`load_classifier` returns them.

    ``heldout_images`` (N, 1, 16, 16) in [−1, 1], ``heldout_labels`` (N,), ``reference_features`` their
    features (float64, N × D), ``metadata`` the file's metadata (training settings, accuracy), ``path``
    the file.
    """

    def __init__(self, network: DigitsClassifier, heldout_digits: torch.Tensor, heldout_labels: torch.Tensor,
                 metadata: dict, path: str):
        self.network = network.eval().requires_grad_(False)
        self.path = path
        self.heldout_images = digits_to_images(heldout_digits)
        self.heldout_labels = heldout_labels.long()
        self.metadata = metadata
        self.reference_features = self.features(self.heldout_images)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Penultimate features (float64, N × D) of images (N, 1, 16, 16), clamped to [−1, 1] first as a
        saved picture would be."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 16, 16):
            raise ValueError(f"the digits classifier takes (N, 1, 16, 16) images, got {tuple(images.shape)}")
        chunks = [self.network.features(images[start:start + batch_size].float().clamp(-1.0, 1.0))
                  for start in range(0, len(images), batch_size)]
        return torch.cat(chunks).double().numpy()

    def frechet_distance(self, images: torch.Tensor) -> float:
        """Fréchet distance of ``images`` to the held-out real digits in the classifier's feature space."""
        return frechet_distance(self.features(images), self.reference_features)


def load_classifier(path: Optional[str] = None) -> DigitsFeatureSpace:
    """The shipped classifier and held-out digits (``demo/digits_classifier.safetensors``), or those at ``path``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path) if path is not None else DEFAULT_CLASSIFIER
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(path, device="cpu")
    missing = [name for name in (HELDOUT_DIGITS, HELDOUT_LABELS) if name not in tensors]
    if missing or "channels" not in metadata or "features" not in metadata:
        raise ValueError(f"{path} is not a digits-classifier file of this pack (missing: "
                         f"{', '.join(missing or ['metadata channels/features'])}); rebuild it with "
                         "`python -m comfyui_dyweight.demo.train_classifier`")
    network = DigitsClassifier(tuple(json.loads(metadata["channels"])), int(metadata["features"]))
    network.load_state_dict({name[len("network."):]: value for name, value in tensors.items()
                             if name.startswith("network.")}, strict=True)
    return DigitsFeatureSpace(network, tensors[HELDOUT_DIGITS], tensors[HELDOUT_LABELS], metadata, path)
