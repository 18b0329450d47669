"""The model calls the student's loss back-propagates through (DyWeight Algorithm 1, line 6; DSS §4).

The gradient of the loss in Φ flows through every model call of the student's trajectory to the
call's input x (and σ, where the grid is learned), never to the model's weights. Model code is not
always written for that: ComfyUI's FLUX blocks add their residual in place (``x += …``) after a
LayerNorm saved ``x`` for its backward pass, which makes a plain backward pass fail ("modified by an
inplace operation") and makes torch's own checkpointing, which does not check the versions of the
tensors it recomputes, silently return the gradient of the modified tensor. So each call watches the
tensors autograd saves; a call that changed one of them is run again with its own copy of each saved
activation, made when it is saved, and so is every later call of the same :func:`differentiable_calls`
(the trainer makes one per run of a student).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Callable

import torch


@contextlib.contextmanager
def saved_tensors(copy: bool):
    """Within it, autograd saves a copy of each saved tensor that is part of the graph (requires grad, once
    per tensor and version) when ``copy``; every other saved tensor is kept with its version, which the
    backward pass checks, as autograd itself does without hooks. Yields ``changed()``: whether a kept
    tensor has been changed in place since it was saved."""
    copies, kept = {}, []

    def pack(tensor):
        if not (copy and tensor.requires_grad):
            # detached: the same data and version counter, without the grad_fn that would make a saved
            # output hold its own graph in a reference cycle
            kept.append((tensor if tensor.grad_fn is None else tensor.detach(), tensor._version))
            return kept[-1]
        known = copies.get(id(tensor))
        if known is None or known[0]() is not tensor or known[1] != tensor._version:
            known = copies[id(tensor)] = (weakref.ref(tensor), tensor._version, tensor.detach().clone())
        return known[2], None

    def unpack(packed):
        tensor, version = packed
        if version is not None and tensor._version != version:
            raise RuntimeError("the model changed a tensor in place after autograd saved it for the backward "
                               f"pass (a {tuple(tensor.shape)} {tensor.dtype} tensor); please report the model")
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield lambda: any(tensor._version != version for tensor, version in kept)


class _RecomputedCall(torch.autograd.Function):
    """``forward(x, σ)`` run without a graph; the backward pass runs it again with one and
    back-propagates through that: one model call of memory at a time."""

    @staticmethod
    def forward(ctx, forward, x, sigma):
        ctx.forward = forward
        ctx.save_for_backward(x, sigma)
        with torch.no_grad():
            return forward(x, sigma)

    @staticmethod
    def backward(ctx, grad_output):
        x, sigma = (tensor.detach().requires_grad_(wanted)
                    for tensor, wanted in zip(ctx.saved_tensors, ctx.needs_input_grad[1:]))
        with torch.enable_grad():
            denoised = ctx.forward(x, sigma)
        wanted = [tensor for tensor in (x, sigma) if tensor.requires_grad]
        gradients = iter(torch.autograd.grad(denoised, wanted, grad_output, allow_unused=True))
        return None, *(next(gradients) if tensor.requires_grad else None for tensor in (x, sigma))


def differentiable_calls(denoise: Callable, checkpointing: bool) -> Callable:
    """``denoise(x, σ, **given)`` (σ 0-d, as the update rule calls it) for the student's loss: each call keeps
    what its backward pass needs, or, with ``checkpointing``, nothing, and is recomputed in the backward
    pass (memory near one model call per step instead of N). The first call that changes a saved tensor in
    place runs again with copies (see :func:`saved_tensors`), and so do all later calls of the returned
    function: make one per training run, not one per loss."""
    copies_needed = False

    def forward(x, sigma, **given):
        nonlocal copies_needed
        with saved_tensors(copy=copies_needed) as changed:
            denoised = denoise(x, sigma, **given)
        if copies_needed or not changed():
            return denoised
        copies_needed = True
        return forward(x, sigma, **given)

    def call(x, sigma, **given):
        if checkpointing:
            return _RecomputedCall.apply(functools.partial(forward, **given), x, sigma)
        return forward(x, sigma, **given)

    return call
