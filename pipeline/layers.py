"""Which intermediate layers a run taps, and which statistics of them (``util.layer_taps``): the
union of what its multi-layer detectors read (their ``taps``), on the modules of
``--feature-layers`` or else the architecture's default list (``models.ModelSpec.layers``)."""

from __future__ import annotations

from models import default_layers
from util.errors import UserError
from util.layer_taps import TapSpec, tap_kinds


def layer_choice(config) -> tuple[tuple[str, ...], str]:
    """(module names, where they come from) of the run's tapped layers."""
    if getattr(config, "feature_layers", None):
        return tuple(config.feature_layers), "--feature-layers"
    return default_layers(config.model_arch), f"{config.model_arch}'s default in models/__init__.py"


def tap_spec(config, detectors) -> TapSpec | None:
    """The run's ``TapSpec``, or None when no detector reads intermediate layers; a UserError when
    one does and the model has no default list and no --feature-layers was given."""
    kinds = tap_kinds(detectors)
    if not kinds:
        return None
    layers, _ = layer_choice(config)
    if not layers:
        readers = ", ".join(d.name for d in detectors if getattr(d, "taps", ()))
        raise UserError(
            f"{readers} read(s) intermediate layers, and {config.model_arch} has no default list: name "
            "its modules with --feature-layers, e.g. --feature-layers layer1,layer2,layer3,layer4"
        )
    return TapSpec(layers, kinds)


def layers_line(config, detectors) -> str | None:
    """The start-of-run line naming the tapped layers and their source, or None."""
    kinds = tap_kinds(detectors)
    if not kinds:
        return None
    layers, source = layer_choice(config)
    shown = ", ".join(layers) if layers else "none (give --feature-layers)"
    return f"layers read by the multi-layer detectors ({'/'.join(kinds)}): {shown} ({source})"
