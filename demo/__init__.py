"""Embedded demo model for ComfyUI-DyWeight.

A tiny pixel-space EDM diffusion model of scikit-learn's handwritten digits
(16x16 grayscale, values in [-1, 1]), and the small digits classifier whose
features give the demo's Fréchet distance.  See ``MODEL_CARD.md`` in this folder.
Runtime needs only torch, safetensors and numpy; ``train_model.py`` and
``train_classifier.py`` additionally need scikit-learn (for the data), the
former also tqdm.
"""
