"""Parsers and checks of the command's flags, each stating its accepted values; nothing heavy is imported here.

Every parser either returns the value its specification gives or raises (argparse's ArgumentTypeError
inside argparse, UsageError after it), so a bad flag is one line and exit code 2 before any work.
Numbers: ASCII digits with an optional sign and surrounding spaces (no `1_000`, no non-ASCII digits). Integers
(counts, indices, seeds) and the values of a sampler's fixed scale (timesteps on 0..1000, the flow shift, the
guidance scale) are written in digits with an optional decimal point: `1e3` is refused. Scientific notation (`3e-4`)
is accepted only for values that span decades (learning rates and other training numbers, a LoRA's alpha, a plan's
budget). Lists: comma-separated; ranges: `A-B`, both ends included.
"""

from __future__ import annotations

import argparse
import math
import re

from probes.spec import CLIP_MAX, MAX_ITEMS, SEED_MAX  # noqa: F401  (the one definition: RecordSpec's bounds)

INT = re.compile(r"\s*([+-]?[0-9]+)\s*")
FLOAT = re.compile(r"\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*")
DECIMAL = re.compile(r"\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))\s*")  # FLOAT without an exponent
DTYPES = ("float32", "bfloat16", "float16")
DEVICE = re.compile(r"(cpu|cuda|cuda:[0-9]{1,3}|mps)")


FULL_MODE_LIMIT_GIB = 8  # `probe run --mode auto` keeps every token up to this much recorded features, then streams


class UsageError(ValueError):
    """Bad user input: reported as one line, exit code 2."""


def integer(text: str, low: int, high: int, what: str = "value") -> int:
    """An integer in low..high written in ASCII digits; a UsageError naming the range otherwise."""
    match = INT.fullmatch(text)
    if not match:
        raise UsageError(f"{what} {text!r} is not an integer; accepted: an integer in {low}..{high}")
    value = int(match[1])
    if not low <= value <= high:
        raise UsageError(f"{what} {value} is out of range; accepted: an integer in {low}..{high}")
    return value


def number(text: str, low: float, high: float, what: str = "value", scientific: bool = True) -> float:
    """A finite number in [low, high], in decimal or (with `scientific`) scientific notation; NaN, inf and beyond-float
    values are refused."""
    match = (FLOAT if scientific else DECIMAL).fullmatch(text)
    value = float(match[1]) if match else math.nan
    if not match or not math.isfinite(value):
        notation = "" if scientific else " in decimal notation (no exponent)"
        raise UsageError(f"{what} {text!r} is not a finite number; accepted: a number in [{low:g}, {high:g}]{notation}")
    if not low <= value <= high:
        raise UsageError(f"{what} {value:g} is out of range; accepted: a number in [{low:g}, {high:g}]")
    return value


def _argtype(check, name: str):
    """An argparse `type` from a check that raises UsageError (argparse prints its one line and exits 2)."""
    def parse(text: str):
        try:
            return check(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name
    return parse


def finite(low: float, high: float, scientific: bool = True):
    """An argparse `type`: a finite number in [low, high] (in decimal notation only, without `scientific`)."""
    return _argtype(lambda text: number(text, low, high, scientific=scientific), f"number in [{low:g}, {high:g}]")


def ranged(low: int, high: int):
    """An argparse `type`: an integer in low..high."""
    return _argtype(lambda text: integer(text, low, high), f"integer in {low}..{high}")


def indices(text: str, flag: str, low: int | None = None, high: int | None = None) -> list[int]:
    """'3' / '0-3' / '0,2,5' -> [3] / [0, 1, 2, 3] / [0, 2, 5]: clips or seeds, at most MAX_ITEMS; each in low..high
    and named once where bounds are given (else parsed only: the spec that takes them checks them, as probe run's
    `probes.spec.RecordSpec`)."""
    bounded = low is not None and high is not None
    each = f", each in {low}..{high}" if bounded else ""
    accepted = f"an integer, a range A-B or a comma-separated list of them{each}, at most {MAX_ITEMS}"
    values: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([+-]?[0-9]{1,40})\s*(?:-\s*([0-9]{1,40})\s*)?", part)
        if not match:
            raise UsageError(f"{flag} {text!r} is not valid; accepted: {accepted}")
        first, last = int(match[1]), int(match[2]) if match[2] else int(match[1])
        if bounded and not (low <= first <= high and low <= last <= high):
            raise UsageError(f"{flag} {part.strip()!r} is out of range; accepted: {accepted}")
        if last < first:
            raise UsageError(f"{flag} range {part.strip()!r} is empty; accepted: {accepted}")
        if len(values) + last - first + 1 > MAX_ITEMS:
            raise UsageError(f"{flag} {text!r} names more than {MAX_ITEMS} values; accepted: {accepted}")
        values += range(first, last + 1)
    if bounded and len(set(values)) != len(values):
        raise UsageError(f"{flag} {text!r} names a value twice; accepted: {accepted}")
    return values


def timestep_list(text: str) -> list[float]:
    """An argparse `type`: comma-separated decimal numbers (no exponent), parsed only: the list's range and order are
    checked where every sampling value is, by `scd.sampling_spec.SamplingSpec`."""
    accepted = "comma-separated decimal numbers (no exponent), e.g. 1000,750,500,250"
    parts = text.split(",")
    if len(parts) > 10_000 or not all(DECIMAL.fullmatch(part) for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: {accepted}")
    return [float(part) for part in parts]


def whole(text: str) -> int:
    """An argparse `type`: an integer in ASCII digits, parsed only (its range is checked by the spec that takes it)."""
    match = INT.fullmatch(text)
    if not match or len(match[1]) > 40:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; accepted: an integer in ASCII digits")
    return int(match[1])


whole.__name__ = "integer"


def decimal(text: str) -> float:
    """An argparse `type`: a decimal number (no exponent), parsed only (its range is checked by the spec that takes
    it)."""
    match = DECIMAL.fullmatch(text)
    if not match or not math.isfinite(float(match[1])):
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number; accepted: digits with an optional point "
                                         "(no exponent)")
    return float(match[1])


timestep_list.__name__ = "timestep list"


def integer_list(low: int, high: int):
    """An argparse `type`: distinct comma-separated integers, each in low..high."""
    def parse(text: str) -> list[int]:
        accepted = f"distinct comma-separated integers, each in {low}..{high}"
        parts = text.split(",")
        if len(parts) > 64 or not all(INT.fullmatch(p) for p in parts):
            raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: {accepted}")
        values = [int(p) for p in parts]
        if any(not low <= v <= high for v in values) or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: {accepted}")
        return values
    parse.__name__ = "integer list"
    return parse


def layers(spec: str, depth: int, flag: str = "--layers", roles: str = "") -> list[int] | str:
    """'15' / '0,5,15' / 'all' -> block indices (or 'all'): the syntax parsed here, the choice checked by
    `probes.choices.checked_layers` (the one check, which a Probe makes too)."""
    from probes.choices import ChoiceError, checked_layers

    accepted = f"comma-separated block indices in 0..{depth - 1}{roles}, or 'all'"
    if spec.strip() == "all":
        return "all"
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not part for part in parts):
        raise UsageError(f"{flag}: empty layer in {spec!r}; accepted: {accepted}")
    for part in parts:
        if not re.fullmatch(r"[+-]?[0-9]+", part):
            raise UsageError(f"{flag}: layer {part!r} is not an integer; accepted: {accepted}")
    try:
        return checked_layers([int(part) for part in parts], depth, roles)
    except ChoiceError as e:
        raise UsageError(f"{flag}: {e}") from None


def layers_syntax(text: str) -> str:
    """An argparse `type` for --layer / --layers: the syntax only (the depth is known once the model is loaded)."""
    if text.strip() != "all" and not re.fullmatch(r"\s*[+-]?[0-9]{1,6}\s*(,\s*[+-]?[0-9]{1,6}\s*)*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: comma-separated block indices, or 'all'")
    return text


def latent_size(text: str) -> tuple[int, int]:
    """'8x8' -> (8, 8): the latent frame size a diffusers model is probed at, each side in 1..1024."""
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*[xX]\s*([0-9]{1,5})\s*", text)
    if not match or not all(1 <= int(v) <= 1024 for v in match.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW; accepted: two integers in 1..1024, e.g. 60x104")
    return int(match[1]), int(match[2])


def device_name(text: str) -> str:
    """An argparse `type`: the syntax of a device this toolkit can run on; `device` checks this machine has it."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; accepted: cpu, cuda, cuda:N, mps")
    return text


def device(name: str):
    """The torch.device of `--device` (float32 commands), checked (`placement`)."""
    return placement(name, "float32").device


def placement(name: str, dtype: str):
    """The checked `scd.devices.Placement` of `--device` (a name `device_name` accepted) and `--dtype` (a name of
    DTYPES): refused unless this torch build can use the device here. The one check of both; loaders trust it."""
    import torch

    from scd.devices import DeviceError, Placement

    try:
        return Placement.check(name, getattr(torch, dtype))
    except DeviceError as e:
        raise UsageError(f"--device {name}: {e}") from None


def plain_name(text: str) -> str:
    """An argparse `type` for names that become file names (scd.files.is_plain_name)."""
    from scd.files import PLAIN_NAME, is_plain_name

    if not is_plain_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain name; accepted: {PLAIN_NAME}")
    return text


def estimate_fits(estimate: int, what: str) -> None:
    """Refuse a job that would not fit in this machine's memory (scd.memory), as a UsageError."""
    from scd.memory import NotEnoughMemory, check_fits

    try:
        check_fits(estimate, what)
    except NotEnoughMemory as e:
        raise UsageError(str(e)) from None


def output(path, kind: str, force: bool, flag: str = "--out"):
    """Refuse, before any work, an output that exists (without --force), is not the toolkit's (with --force),
    or cannot be written (scd.files.check_output). Returns a `scd.files.CheckedOutput`, which the toolkit's writers
    take in place of the path and trust."""
    from scd.files import checked_output

    return checked_output(path, kind, force, flag, error=UsageError)


def size_latent(size: str, latent: tuple[int, int] | None) -> tuple[int, int]:
    """The latent frame (height, width) a `--size` model runs at: `--latent-size`, else the size's own; refused
    unless it is whole patches."""
    from scd.models.baseline import BASELINE_SIZES

    config = BASELINE_SIZES[size]
    height, width = latent or config.frame_shape[1:]
    if height % config.patch_size or width % config.patch_size:
        raise UsageError(f"--latent-size {height}x{width} is not in whole {config.patch_size}x{config.patch_size} "
                         f"patches; accepted: each side a multiple of {config.patch_size}, e.g. 60x104")
    return height, width

