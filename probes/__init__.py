"""Capture what a causal video diffuser computes while it generates.

    from probes import Probe, load_run
    with Probe(model, layers=[15, 28], capture=("features", "attention")) as probe:
        video = generate(model, context=clip[:4], frames=4, steps=50, seed=0)
    probe.save("reports/runs/demo", ground_truth=clip[:8])
    run = load_run("reports/runs/demo")

`Probe` (probe.py) over two backends (backends/: TransformerLens HookPoints, nnsight), the exact
per-frame attention mass (attention.py), cross-step reductions (reductions.py), the run
directory (store.py, written through scd.outputs). The names below are
imported on first use (PEP 562), so that `probes.choices` needs no torch.
"""

from importlib import import_module

_EXPORTS = {"Probe": "probes.probe", "ProbeError": "probes.errors", "Run": "probes.store", "RunError": "probes.store",
            "load_run": "probes.store", "write_run": "probes.store"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
