"""The refusal of the analyses (a measure asked of a recording that cannot give it); one line, the accepted values."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class AnalysisError(ValueError):
    """A measure, figure or table asked of a recording, or with arguments, that it cannot be computed from."""


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def takes_run(function: F) -> F:
    """Check, once at the boundary, what every analysis of a run is given: `run` a Recording (live or loaded), and its
    indices (`layer`, `frame`, `head`, `layers`) non-negative integers, a frame (a video frame number) one of the
    recorded ones. A refusal is an AnalysisError naming the accepted values."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        from probes.recording import Recording

        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise AnalysisError(f"{function.__name__}: {e}; accepted: {function.__name__}{signature}") from None
        run = bound.arguments.get("run")
        if not isinstance(run, Recording):
            raise AnalysisError(f"{function.__name__}: run is a {type(run).__name__}; accepted: a Recording "
                                "(probes.load_run(path))")
        for name in ("layer", "frame", "head"):
            value = bound.arguments.get(name)
            if name in bound.arguments and value is not None and not _index(value):
                raise AnalysisError(f"{function.__name__}: {name} = {value!r}; accepted: an integer >= 0")
        frame = bound.arguments.get("frame")
        recorded = run.frames
        if frame is not None and "frame" in bound.arguments and frame not in recorded:
            raise AnalysisError(f"{function.__name__}: frame = {frame} was not recorded; accepted: a recorded video "
                                f"frame number, one of {recorded}")
        layers = bound.arguments.get("layers")
        if layers is not None and (isinstance(layers, str | bytes) or not isinstance(layers, Iterable) or
                                   not all(_index(v) for v in layers)):
            raise AnalysisError(f"{function.__name__}: layers = {layers!r}; accepted: None or a list of block indices")
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]
