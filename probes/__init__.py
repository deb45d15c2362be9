"""Capture what a causal video diffuser computes while it generates.

So far: `probes.attention`, the exact per-frame attention mass from hooked q and k, and
`probes.store`, the run directory (`write_run`, `load_run`). Issue 3 adds `Probe` and `probe run`.
"""

from probes.store import Run, RunError, load_run, write_run

__all__ = ["Run", "RunError", "load_run", "write_run"]
