"""Every analysis of a run checks what it is given, once, at its boundary: a Run, and non-negative integer indices (a
frame one of the recorded ones); anything else is one AnalysisError line, never an AttributeError or IndexError."""

from __future__ import annotations

import importlib
import inspect

import pytest

from analyses.errors import AnalysisError
from probes.recording import load_run
from tests.probes.test_store import _write

MODULES = ("claims", "emergence", "figures", "paper_figures", "report", "similarity", "sparsity")
FUNCTIONS = [(m, name, f) for m in MODULES for name, f in vars(importlib.import_module(f"analyses.{m}")).items()
             if inspect.isfunction(f) and hasattr(f, "__wrapped__") and not name.startswith("_")
             and f.__module__ == f"analyses.{m}"]


def test_every_public_function_of_a_run_is_checked():
    by_hand = [name for m in MODULES for name, f in vars(importlib.import_module(f"analyses.{m}")).items()
               if inspect.isfunction(f) and f.__module__ == f"analyses.{m}" and not name.startswith("_")
               and list(inspect.signature(f).parameters)[:1] == ["run"]]
    assert sorted(by_hand) == sorted(name for _, name, _ in FUNCTIONS) and len(by_hand) >= 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run"
    _write(path)
    return load_run(path)


@pytest.mark.parametrize("module, name, function", FUNCTIONS, ids=[f"{m}.{n}" for m, n, _ in FUNCTIONS])
def test_bad_arguments_are_one_analysis_error(module, name, function, run):
    parameters = inspect.signature(function).parameters
    required = {n: {"layer": 15, "steps": "all"}.get(n, 0) for n, p in list(parameters.items())[1:]
                if p.default is inspect.Parameter.empty}
    for bad_run in (None, "reports/runs/x", 3):
        with pytest.raises(AnalysisError, match="accepted: a Recording"):
            function(bad_run, **required)
    for parameter, values in (("layer", (-1, 1.5, "15", True)), ("frame", (-1, 99, "0")), ("head", (-1, 0.5)),
                              ("layers", ("15", [1, -2], 7))):
        if parameter in parameters:
            for value in values:
                with pytest.raises(AnalysisError) as error:
                    function(run, **{**required, parameter: value})
                assert len(str(error.value).splitlines()) == 1 and "accepted" in str(error.value)
