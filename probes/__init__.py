"""Capture what a causal video diffuser computes while it generates.

    from probes import Probe, load_run
    with Probe(model, layers=[15, 28], capture=("features", "attention")) as probe:
        video = generate(model, context=clip[:4], frames=4, steps=50, seed=0)
    probe.save("reports/runs/demo", ground_truth=clip[:8])
    run = load_run("reports/runs/demo")

`Probe` (probe.py) over two backends (backends/: TransformerLens HookPoints, nnsight), the exact
per-frame attention mass (attention.py), cross-step reductions (reductions.py) and the run
directory (store.py).
"""

from probes.probe import Probe, ProbeError
from probes.store import Run, RunError, load_run, write_run

__all__ = ["Probe", "ProbeError", "Run", "RunError", "load_run", "write_run"]
