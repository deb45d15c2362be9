"""The probe-overhead benchmark's in-run clock: it times the probe's own callbacks and always puts them back."""

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from probes import Probe
from scd import generate

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_probes.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_probes", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_clock_counts_callback_time_once_and_restores_the_methods(tiny_model):
    bench = _bench_module()
    originals = {name: Probe.__dict__[name] for name in bench.PROBE_CALLBACKS}
    context = torch.zeros(2, *tiny_model.config.frame_shape)
    delay = 0.05  # above the tiny model's whole pass: counting a nested call twice would exceed the wall time
    slow_flush = Probe._flush

    def flush_with_delay(self):  # a known cost inside a nested call (on_step -> _flush): counted once
        time.sleep(delay)
        slow_flush(self)

    Probe._flush = flush_with_delay
    try:
        with bench.clock_probe_callbacks() as inside:
            start = time.perf_counter()
            with Probe(tiny_model, "all") as probe:
                generate(tiny_model, context, 2, steps=3)
            probe._recorded()  # builds the live recording
            wall = time.perf_counter() - start
        passes = 2 * 3  # each denoising pass is announced by on_step, which flushes the pass before it
        assert passes * delay <= inside[0] < wall
    finally:
        Probe._flush = slow_flush
    assert {name: Probe.__dict__[name] for name in bench.PROBE_CALLBACKS} == originals


def test_the_clock_restores_the_methods_when_the_run_fails(tiny_model):
    bench = _bench_module()
    originals = {name: Probe.__dict__[name] for name in bench.PROBE_CALLBACKS}
    with pytest.raises(RuntimeError, match="boom"), bench.clock_probe_callbacks():
        raise RuntimeError("boom")
    assert {name: Probe.__dict__[name] for name in bench.PROBE_CALLBACKS} == originals
