"""Statistics of intermediate layers, computed in the feature cache's one forward pass.

A multi-layer detector (Gram, multi-layer Mahalanobis, NAC) reads, beside the penultimate
features, per-image statistics of the outputs z (B, C_l, ...) of named modules. Forward hooks
reduce each output as it is made, so feature maps are never stored; the cache keeps one (N, ...)
array per layer and kind:

- ``pooled``: the mean of z over its positions, (C_l,) (Lee et al. 2018's layer features);
- ``gram``: row sums of the p-th order Gram matrices, (GRAM_POWERS, C_l): for F = z reshaped to
  (C_l, positions), g_p = sign(r) |r|^(1/p) with r = rowsum(F^p (F^p)^T) = F^p (F^p)^T 1 = F^p s,
  s_k = sum_j F_jk^p (Sastry & Oore, ICML 2020), p = 1..GRAM_POWERS, in float64;
- ``nac``: (sum_pos z) * (sum_pos g), g = d KL(u || softmax(logits)) / dz, per channel, (C_l,):
  NAC's neuron state before its sigmoid as the authors' code pools conv outputs (Liu et al., ICLR
  2024, BierOne/ood_coverage: the output and its gradient each summed over positions, then
  multiplied; z * g for an output without positions); it needs a backward pass from the logits.

Default layers per built-in architecture are in ``models.MODELS`` (``ModelSpec.layers``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from util.errors import UserError

GRAM_POWERS = 10  # Sastry & Oore use p = 1..10; a detector reads the first P <= 10


def pooled(z: torch.Tensor) -> torch.Tensor:
    """Mean of each channel over its positions: (B, C_l, ...) -> (B, C_l) float32."""
    return z.float().flatten(2).mean(dim=2) if z.dim() > 2 else z.float()


def summed(z: torch.Tensor) -> torch.Tensor:
    """Sum of each channel over its positions: (B, C_l, ...) -> (B, C_l) float32."""
    return z.float().flatten(2).sum(dim=2) if z.dim() > 2 else z.float()


def gram_rows(z: torch.Tensor, powers: int = GRAM_POWERS) -> torch.Tensor:
    """(B, powers, C_l) float32: the signed p-th root of the row sums of F^p (F^p)^T, p = 1..powers."""
    f = z.double().flatten(2) if z.dim() > 2 else z.double().unsqueeze(2)
    rows, fp = [], f
    for p in range(1, powers + 1):
        fp = fp * f if p > 1 else f  # F^p, elementwise
        r = torch.bmm(fp, fp.sum(dim=1).unsqueeze(2)).squeeze(2)  # F^p (F^p)^T 1 = F^p s
        rows.append(r.sign() * r.abs() ** (1.0 / p))
    return torch.stack(rows, dim=1).float()


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(u || softmax(logits)) summed over the batch: sum_i (-log C - mean_c log p_ic)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (-log_p.mean(dim=1) - np.log(logits.shape[1])).sum()


@dataclass(frozen=True)
class TapKind:
    """How one kind reduces a layer output z (and, when ``needs_grad``, dKL/dz) to a row per image."""

    reduce: Callable[..., torch.Tensor]
    row_shape: Callable[[int], tuple[int, ...]]  # from the layer's channels C_l
    needs_grad: bool = False


TAP_KINDS: dict[str, TapKind] = {
    "pooled": TapKind(lambda z, grad: pooled(z), lambda c: (c,)),
    "gram": TapKind(lambda z, grad: gram_rows(z), lambda c: (GRAM_POWERS, c)),
    "nac": TapKind(lambda z, grad: summed(z) * summed(grad), lambda c: (c,), needs_grad=True),
}


def tap_kinds(detectors) -> tuple[str, ...]:
    """The layer statistics the ``detectors`` read (the union of their ``taps``), in first-asked
    order; empty when none reads intermediate layers."""
    return tuple(dict.fromkeys(kind for d in detectors for kind in getattr(d, "taps", ())))


@dataclass(frozen=True)
class TapSpec:
    """Which modules' outputs a run reads (``layers``, module names) and how (``kinds``)."""

    layers: tuple[str, ...]
    kinds: tuple[str, ...]

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in TAP_KINDS]
        if unknown:
            raise ValueError(f"unknown layer statistics {unknown}; known: {', '.join(TAP_KINDS)}")

    @property
    def needs_grad(self) -> bool:
        return any(TAP_KINDS[k].needs_grad for k in self.kinds)

    def covered_by(self, other: TapSpec | None) -> bool:
        """Whether ``other`` (what an entry holds) has these layers and at least these kinds."""
        return other is not None and other.layers == self.layers and set(self.kinds) <= set(other.kinds)

    def as_dict(self) -> dict:
        return {"layers": list(self.layers), "kinds": list(self.kinds), "gram_powers": GRAM_POWERS}

    @classmethod
    def from_dict(cls, d: dict | None) -> TapSpec | None:
        if not d or d.get("gram_powers") != GRAM_POWERS:
            return None
        return cls(tuple(d["layers"]), tuple(d["kinds"]))

    def array_names(self) -> list[tuple[str, int, str]]:
        """(kind, layer index, file stem) of every array an entry holds: ``layer{i}_{kind}``."""
        return [(k, i, f"layer{i}_{k}") for i in range(len(self.layers)) for k in self.kinds]


@dataclass(frozen=True)
class LayerArrays:
    """Per-image statistics of the tapped layers of N images: ``arrays[kind][l]`` is the (N, ...)
    array of layer ``names[l]`` (the kinds of ``util.layer_taps.TAP_KINDS``)."""

    names: tuple[str, ...]
    arrays: dict[str, tuple[np.ndarray, ...]]

    def __len__(self) -> int:
        first = next(iter(self.arrays.values()), ())
        return len(first[0]) if first else 0

    @classmethod
    def concatenate(cls, parts: list[LayerArrays]) -> LayerArrays:
        """The rows of ``parts`` (same layers) one after another, in memory, of the kinds they all
        hold (one cache entry may hold more kinds than another)."""
        kinds = [k for k in parts[0].arrays if all(k in p.arrays for p in parts)]
        layers = range(len(parts[0].names))
        return cls(
            parts[0].names,
            {k: tuple(np.concatenate([p.arrays[k][i] for p in parts]) for i in layers) for k in kinds},
        )

    def rows(self, index) -> LayerArrays:
        """The arrays of the rows ``index`` (a slice or an index array), read into memory."""
        return LayerArrays(
            self.names, {k: tuple(np.asarray(a[index]) for a in v) for k, v in self.arrays.items()}
        )

    def block(self, start: int, stop: int) -> dict[str, list[torch.Tensor]]:
        """Rows [start, stop) as float32 tensors, ``{kind: [one (B, ...) tensor per layer]}``."""
        return {
            k: [torch.from_numpy(np.array(a[start:stop], dtype=np.float32)) for a in v]
            for k, v in self.arrays.items()
        }


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The module ``name`` of ``model`` (of its ``body`` for a model split at its head)."""
    modules = dict(model.named_modules())
    for candidate in (name, f"body.{name}"):
        if candidate and candidate in modules:
            return modules[candidate]
    top = [n for n, _ in (model.body if hasattr(model, "body") else model).named_children()]
    raise UserError(
        f"the model has no module {name!r} for --feature-layers; its top-level modules are: "
        f"{', '.join(top)} (give dotted names for deeper ones, e.g. layer1.0)"
    )


class LayerTaps:
    """Forward hooks on the modules of ``spec.layers`` that keep their outputs of one forward pass;
    ``reduce(logits)`` gives the flat rows (B, E) of every kind and layer in ``spec.array_names()``
    order. Used as a context manager: the hooks are removed on exit."""

    def __init__(self, model: nn.Module, spec: TapSpec):
        self.spec = spec
        self.modules = [find_module(model, name) for name in spec.layers]
        self.outputs: list[torch.Tensor | None] = [None] * len(self.modules)
        self.handles = []

    @classmethod
    def maybe(cls, model: nn.Module, spec: TapSpec | None):
        """``LayerTaps(model, spec)``, or a context that gives None without a spec."""
        return cls(model, spec) if spec is not None else contextlib.nullcontext()

    def __enter__(self) -> LayerTaps:
        for i, module in enumerate(self.modules):
            self.handles.append(module.register_forward_hook(self._keeper(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.outputs = [None] * len(self.modules)

    def _keeper(self, i: int):
        def hook(_module, _inputs, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def _check_ran(self) -> None:
        missing = [self.spec.layers[i] for i, z in enumerate(self.outputs) if z is None]
        if missing:
            raise UserError(
                f"--feature-layers: module(s) {', '.join(missing)} did not run in the forward pass; "
                "name modules that forward_features runs"
            )

    def channels(self) -> list[int]:
        """Channels C_l (dimension 1) of each tapped output of the last forward pass."""
        self._check_ran()
        return [int(z.shape[1]) if z.dim() > 1 else 1 for z in self.outputs]

    def reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, E) float32: each kind's row of each tapped output, flattened, in array order."""
        self._check_ran()
        grads = [None] * len(self.outputs)
        if self.spec.needs_grad:
            grads = list(torch.autograd.grad(kl_to_uniform(logits), self.outputs))
        parts = []
        for kind, i, _ in self.spec.array_names():
            row = TAP_KINDS[kind].reduce(self.outputs[i].detach(), grads[i])
            parts.append(row.reshape(len(row), -1))
        self.outputs = [None] * len(self.modules)
        return torch.cat(parts, dim=1).detach()

    def layer_arrays(self, logits: torch.Tensor) -> LayerArrays:
        """``reduce(logits)`` as the ``LayerArrays`` of this batch (float32, CPU)."""
        shapes = self.row_shapes(self.channels())
        flat = self.reduce(logits).float().cpu().numpy()
        arrays: dict[str, list] = {kind: [] for kind in self.spec.kinds}
        for (kind, _, _), part in zip(self.spec.array_names(), split_rows(flat, shapes)):
            arrays[kind].append(part)
        return LayerArrays(self.spec.layers, {k: tuple(v) for k, v in arrays.items()})

    def row_shapes(self, channels: list[int]) -> list[tuple[int, ...]]:
        """Row shape of each array (``spec.array_names()`` order) given each layer's channels."""
        return [TAP_KINDS[k].row_shape(channels[i]) for k, i, _ in self.spec.array_names()]


def split_rows(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The (B, E) rows of ``LayerTaps.reduce`` cut back into one (B, *shape) array per entry."""
    sizes = [int(np.prod(s)) for s in shapes]
    cuts = np.cumsum([0, *sizes])
    return [flat[:, a:b].reshape(len(flat), *s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes)]
