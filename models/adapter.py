"""Any classifier whose output layer is an ``nn.Linear``, split into features and that head.

The detectors need the penultimate feature h (the head's input) and the head W h + b. For a model
without ``forward_features``/``get_classifier`` (torchvision's and timm's builders, a user's own
network), ``adapt`` finds the output Linear, either named by the user (``--head classifier.1``; a
Sequential named there stands for its last Linear) or as the last Linear the forward pass runs on
a probe input, and replaces it inside the model by ``nn.Identity``. Then

    forward_features(x) = model_without_head(x)  (B, D),  get_classifier() = the Linear,
    forward(x) = get_classifier()(forward_features(x)),

which is exactly ``model(x)`` when nothing follows the head: the probe checks that, and that the
head receives (B, D) features, and says what to do when either fails.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from util.errors import UserError

PROBE_TOLERANCE = 1e-4  # relative to the largest |logit|; the split model runs the same ops


class AdaptedClassifier(nn.Module):
    """``body`` is the model with its head replaced by Identity; ``head_name`` where it was."""

    def __init__(self, body: nn.Module, fc: nn.Linear, head_name: str):
        super().__init__()
        self.body = body
        self.fc = fc
        self.head_name = head_name

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _linear_calls(model: nn.Module, probe: torch.Tensor) -> tuple[list, torch.Tensor]:
    """(each nn.Linear call of the forward pass on ``probe`` as (module, input shape), in order;
    the model's output): one probe pass finds the head and what it receives."""
    calls: list[tuple[nn.Module, tuple]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: calls.append((mod, tuple(inp[0].shape))))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        out = run_probe(model, probe)
    finally:
        for h in hooks:
            h.remove()
    return calls, out


def run_probe(model: nn.Module, probe: torch.Tensor) -> torch.Tensor:
    """``model(probe)`` without autograd; an error becomes a UserError naming the input size."""
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:
        size = "x".join(str(s) for s in probe.shape[-2:])
        raise UserError(
            f"the model does not run on {size} inputs ({type(exc).__name__}: {str(exc).strip()[:200]}); "
            "pass --image-size with the size it was built for (and --mean/--std if it was trained "
            "with others)"
        ) from None
    if isinstance(out, (tuple, list)) or not isinstance(out, torch.Tensor):
        raise UserError(
            f"the model returns {type(out).__name__}, not a tensor of logits, in eval mode; wrap it so that "
            "forward(x) returns the logits"
        )
    return out


def resolve_head(model: nn.Module, head: str, label: str | None = None) -> tuple[str, nn.Linear]:
    """(the module name, the output nn.Linear) named ``head`` (a Sequential there: its last layer),
    else a UserError; ``label`` names the setting in messages (default ``--head 'name'``)."""
    label = label or f"--head {head!r}"
    try:
        module = model.get_submodule(head)
    except AttributeError:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise UserError(
            f"{label}: the model has no submodule of that name; its nn.Linear layers: "
            f"{', '.join(linears[-5:]) or 'none'}"
        ) from None
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Linear):
        return f"{head}.{len(module) - 1}", module[-1]
    if not isinstance(module, nn.Linear):
        raise UserError(f"{label} is a {type(module).__name__}, not an nn.Linear output layer")
    return head, module


def adapt(model: nn.Module, image_size: int, head: str | None = None) -> nn.Module:
    """``model`` split at its output Linear into an ``AdaptedClassifier``, checked on a probe input
    of ``image_size``. A model's own ``forward_features`` is not relied on: in timm it is the
    feature map before pooling, not the head's input."""
    model = model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    calls, expected = _linear_calls(model, probe)
    if head is None:
        if not calls:
            raise UserError(
                f"{type(model).__name__} runs no nn.Linear: its output layer must be an nn.Linear "
                "(e.g. SqueezeNet's convolutional classifier is not), or name one with --head"
            )
        head = {id(m): n for n, m in model.named_modules()}[id(calls[-1][0])]
    head, fc = resolve_head(model, head)
    shapes = [shape for module, shape in calls if module is fc]
    if not shapes or len(shapes[-1]) != 2:
        raise UserError(
            f"the output layer {head} receives {shapes[-1] if shapes else 'nothing'}, not (batch, features); "
            "name the classifier's Linear with --head"
        )
    parent_name, _, leaf = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    not_last = UserError(
        f"the model's output is not its layer {head} applied to that layer's input (something follows "
        "it in forward); name the output Linear with --head, or wrap the model so that it ends in it"
    )
    setattr(parent, leaf, nn.Identity())
    adapted = AdaptedClassifier(model, fc, head).eval()
    try:
        with torch.no_grad():
            got = adapted(probe)
    except Exception:  # what followed the head needed its output: the layer is not the last step
        got = None
    scale = expected.abs().max().clamp_min(1.0)
    if got is None or got.shape != expected.shape or (got - expected).abs().max() > PROBE_TOLERANCE * scale:
        setattr(parent, leaf, fc)  # leave the user's model as it was
        raise not_last
    return adapted
