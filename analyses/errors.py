"""The refusal of the analyses (a measure asked of a recording that cannot give it); one line, the accepted values."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class AnalysisError(ValueError):
    """A measure, figure or table asked of a recording, or with arguments, that it cannot be computed from."""


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def takes_run(function: F) -> F:
    """Check, once at the boundary, what every analysis of a run is given: `run` a Run (live recordings are saved and
    loaded first), and its indices (`layer`, `frame`, `head`, `layers`) non-negative integers, a frame one of the
    recorded ones. A refusal is an AnalysisError naming the accepted values."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        from probes.store import Run

        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise AnalysisError(f"{function.__name__}: {e}; accepted: {function.__name__}{signature}") from None
        run = bound.arguments.get("run")
        if not isinstance(run, Run):
            raise AnalysisError(f"{function.__name__}: run is a {type(run).__name__}; accepted: a Run "
                                "(probes.load_run(path))")
        for name in ("layer", "frame", "head"):
            value = bound.arguments.get(name)
            if name in bound.arguments and value is not None and not _index(value):
                raise AnalysisError(f"{function.__name__}: {name} = {value!r}; accepted: an integer >= 0")
        frame = bound.arguments.get("frame")
        recorded = len(run.manifest.get("frames", []))
        if frame is not None and "frame" in bound.arguments and frame >= recorded:
            raise AnalysisError(f"{function.__name__}: frame = {frame} (an index into the {recorded} recorded frames "
                                f"{run.manifest.get('frames')}); accepted: 0..{recorded - 1}")
        layers = bound.arguments.get("layers")
        if layers is not None and (isinstance(layers, str | bytes) or not hasattr(layers, "__iter__") or
                                   not all(_index(v) for v in layers)):
            raise AnalysisError(f"{function.__name__}: layers = {layers!r}; accepted: None or a list of block indices")
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]
