"""Embedded demo model for ComfyUI-DyWeight.

A tiny pixel-space EDM diffusion model of scikit-learn's handwritten digits
(16x16 grayscale, values in [-1, 1]).  See ``MODEL_CARD.md`` in this folder.
Runtime needs only torch and safetensors; ``train_model.py`` additionally
needs scikit-learn (for the data) and tqdm.
"""
