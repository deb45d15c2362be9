"""Which devices and dtypes a model can be put on here, checked once before anything moves: `Placement.check` is the
one validator of a device and a dtype; `load_model`, `random_model`, `load_causal_wan` and `generate` take a checked
`Placement` as their `device` and trust it (`placed`), so `probe run` checks `--device` and `--dtype` once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class DeviceError(ValueError):
    """A device or dtype this torch build cannot use here; the message names the accepted ones."""


def accepted_devices() -> str:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device if this machine can compute on it (cpu, an available cuda:N, mps); a
    DeviceError otherwise (meta, a missing GPU, a malformed name)."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; accepted: {accepted_devices()}") from None
    usable = found.type == "cpu" or (
        found.type == "cuda" and torch.cuda.is_available() and (found.index or 0) < torch.cuda.device_count()) or (
        found.type == "mps" and torch.backends.mps.is_available())
    if not usable:
        raise DeviceError(f"device {str(found)!r} cannot be used here; accepted: {accepted_devices()}")
    return found


def float_dtype(dtype: torch.dtype) -> torch.dtype:
    """`dtype` if models here can run in it; a DeviceError naming the accepted ones otherwise."""
    if dtype not in DTYPES:
        raise DeviceError(f"dtype {dtype!r} is not accepted; accepted: {', '.join(str(d) for d in DTYPES)}")
    return dtype


@dataclass(frozen=True)
class Placement:
    """Where a model runs, checked (Placement.check): a device this machine can compute on, a dtype models run in."""
    device: torch.device    # cpu, an available cuda:N, or mps
    dtype: torch.dtype      # DTYPES

    @classmethod
    def check(cls, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Placement:
        """The one validation of a device and a dtype (a DeviceError naming the accepted ones)."""
        return cls(usable_device(device), float_dtype(dtype))


def placed(device: str | torch.device | Placement, dtype: torch.dtype | None) -> Placement:
    """A checked `Placement` given as `device`, trusted (its dtype is the one: `dtype` must be None or the same); else
    `device` and `dtype` (None: float32) checked."""
    if isinstance(device, Placement):
        if dtype is not None and dtype != device.dtype:
            raise DeviceError(f"dtype {dtype} beside a Placement in {device.dtype}; accepted: the Placement alone")
        return device
    return Placement.check(device, torch.float32 if dtype is None else dtype)
