"""Capture what a causal video diffuser computes while it generates (probes arrive with issue 3)."""
