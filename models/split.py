"""The penultimate features of any classifier, read without changing it.

A detector needs h, the input of the classifier's output ``nn.Linear`` (its head), and the head
itself. ``models.adapter`` splits a model at its head once and for all (it replaces the head by
``nn.Identity`` inside the model); this module instead reads h with a forward hook during the
model's own forward pass, so a user's model stays exactly as it was (modules, mode, device,
weights) and ``model(x)`` is the one forward pass:

    h = input of the head in ``model(x)``,  logits = model(x) = head(h)  (checked).

The head is the layer named by ``head`` (a Sequential named there stands for its last Linear),
else ``model.get_classifier()`` when that is an ``nn.Linear`` (the built-in models, timm's, the
adapter's), else the last ``nn.Linear`` the forward pass runs on (batch, features) input.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from util.errors import UserError

from .adapter import PROBE_TOLERANCE, resolve_head


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with none."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def named_head(model: nn.Module, head: str) -> nn.Linear:
    """The output Linear named ``head`` (``adapter.resolve_head``), else a UserError."""
    return resolve_head(model, head, label=f"head={head!r}")[1]


def known_head(model: nn.Module, head: str | None = None) -> nn.Linear | None:
    """The head named by ``head``, else ``get_classifier()`` when it is a Linear, else None (found
    on the first forward pass by ``features_and_logits``)."""
    if head is not None:
        return named_head(model, head)
    get = getattr(model, "get_classifier", None)
    fc = get() if callable(get) else None
    return fc if isinstance(fc, nn.Linear) else None


def features_and_logits(
    model: nn.Module, x: torch.Tensor, head: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """(h (B, D), logits (B, C), the head) of one batch from one ``model(x)`` without autograd,
    float32 on the model's device; the model runs in the mode it is in (see ``evaluating``).

    Raises a UserError when no Linear receives (batch, features) input or when the model's output
    is not its head's output (something follows the head: name the head, or wrap the model).
    """
    fc = known_head(model, head)
    watched = [fc] if fc is not None else [m for m in model.modules() if isinstance(m, nn.Linear)]
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0], out))) for m in watched
    ]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    flat = [c for c in calls if isinstance(c[1], torch.Tensor) and c[1].dim() == 2 and len(c[1]) == len(x)]
    if not flat:
        what = f"its layer {type(fc).__name__}" if fc is not None else "no nn.Linear layer"
        raise UserError(
            f"{type(model).__name__}: {what} receives (batch, features) input in the forward pass; "
            "the output layer must be an nn.Linear on pooled features (name it with head=...)"
        )
    module, h, head_out = flat[-1]
    _check_output(model, out, head_out)
    return h.detach().float(), out.detach().float(), module


def _check_output(model: nn.Module, out, head_out: torch.Tensor) -> None:
    """The model's output must be its head's output (the logits the detectors recompute from h)."""
    if out is head_out:
        return
    same = isinstance(out, torch.Tensor) and out.shape == head_out.shape
    if same:
        scale = head_out.abs().max().clamp_min(1.0)
        same = bool((out.float() - head_out.float()).abs().max() <= PROBE_TOLERANCE * scale)
    if not same:
        raise UserError(
            f"{type(model).__name__}'s output is not its output Linear's (something follows that layer "
            "in forward, or it returns more than the logits); pass head='<name of the output Linear>' "
            "or wrap the model so that forward(x) returns the logits"
        )
