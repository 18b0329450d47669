"""The model calls the student's loss back-propagates through (DyWeight Algorithm 1, line 6; DSS §4).

The gradient of the loss in Φ flows through every model call of the student's trajectory to the
call's input x (and σ, where the grid is learned), never to the model's weights. Model code is not
written for that: ComfyUI's FLUX blocks add their residual in place (``x += …``) after a LayerNorm
saved ``x`` for its backward pass, which makes a plain backward pass fail ("modified by an inplace
operation") and makes torch's own checkpointing, which does not check the saved tensors' versions,
silently return a gradient of the modified tensor. So every activation a model call saves for the
backward pass is its own copy, made when it is saved: the model may change the tensor afterwards.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable

import torch


@contextlib.contextmanager
def private_saved_tensors():
    """Within it, autograd saves a copy of each saved tensor that is part of the graph (requires grad), once
    per tensor and version; other saved tensors (weights, σ-only features) are kept as they are, and a
    backward pass that finds one of them changed since raises, as autograd itself does without hooks."""
    copies = {}

    def pack(tensor):
        if not tensor.requires_grad:
            return tensor, tensor._version
        key = id(tensor)
        known = copies.get(key)
        if known is None or known[0]() is not tensor or known[1] != tensor._version:
            known = copies[key] = (weakref.ref(tensor), tensor._version, tensor.detach().clone())
        return known[2], None

    def unpack(packed):
        tensor, version = packed
        if version is not None and tensor._version != version:
            raise RuntimeError("the model changed a tensor in place after autograd saved it for the backward "
                               f"pass (a {tuple(tensor.shape)} {tensor.dtype} tensor that needs no gradient); "
                               "train with checkpointing, or report the model")
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


class _RecomputedCall(torch.autograd.Function):
    """``denoise(x, σ)`` run without a graph; the backward pass runs it again with one (under
    :func:`private_saved_tensors`) and back-propagates through that: one model call of memory at a time."""

    @staticmethod
    def forward(ctx, denoise, x, sigma):
        ctx.denoise = denoise
        ctx.save_for_backward(x, sigma)
        with torch.no_grad():
            return denoise(x, sigma)

    @staticmethod
    def backward(ctx, grad_output):
        x, sigma = (tensor.detach().requires_grad_(wanted)
                    for tensor, wanted in zip(ctx.saved_tensors, ctx.needs_input_grad[1:]))
        with torch.enable_grad(), private_saved_tensors():
            denoised = ctx.denoise(x, sigma)
        wanted = [tensor for tensor in (x, sigma) if tensor.requires_grad]
        gradients = iter(torch.autograd.grad(denoised, wanted, grad_output, allow_unused=True))
        return None, *(next(gradients) if tensor.requires_grad else None for tensor in (x, sigma))


def differentiable_calls(denoise: Callable, checkpointing: bool) -> Callable:
    """``denoise(x, σ)`` (σ 0-d, as the update rule calls it) for the student's loss: each call keeps its own copies of what its backward pass needs,
    or, with ``checkpointing``, nothing, and is recomputed in the backward pass (memory near one model
    call per step instead of N)."""

    def call(x, sigma):
        if checkpointing:
            return _RecomputedCall.apply(denoise, x, sigma)
        with private_saved_tensors():
            return denoise(x, sigma)

    return call
