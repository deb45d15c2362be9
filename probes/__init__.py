"""Capture what a causal video diffuser computes while it generates.

So far: `probes.attention`, the exact per-frame attention mass from hooked q and k (issue 3 adds
`Probe`, the run directory and `probe run`).
"""
