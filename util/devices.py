"""Choosing and checking the torch device and the forward-pass precision."""

from __future__ import annotations

import torch

from util.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> torch.device:
    """torch.device(name), refusing devices this machine does not have (with what it has)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: this machine has no usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def check_precision(precision: str, device: torch.device) -> str:
    """fp32 (default, exact), bf16 (CPU or CUDA autocast) or fp16 (CUDA autocast only)."""
    if precision not in ("fp32", *AUTOCAST_DTYPES):
        raise UserError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 autocast needs a CUDA device; use --precision bf16 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{device} does not support bfloat16; use --precision fp16 on this GPU")
    return precision
