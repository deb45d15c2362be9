"""Record what a causal video diffuser computes while it generates.

    import probes, scd
    rec = probes.record(scd.load_model("baseline"), 0, layers=[15])   # generate and record: a live Recording
    rec.token_cosine(15, frame=4)                                      # layer 15, video frame 4: [S, S]
    rec.save("reports/runs/demo"); run = probes.load_run("reports/runs/demo")   # the same Recording, loaded

or, around any call of `scd.generate`:

    with probes.Probe(model, layers=[15, 28]) as probe:
        scd.generate(model, context=clip[:4], frames=4, steps=50, seed=0)
    probe.gram(15)                                                     # the probe is the live Recording

`Probe` (probe.py) over two backends (backends/: TransformerLens HookPoints, nnsight), the exact
per-frame attention mass (attention.py), cross-step reductions (reductions.py), the `Recording`
(recording.py), the run directory (store.py, written through scd.files), sweeps over clips, seeds
and ranks (sweep.py). The names below are imported on first use (PEP 562), so that `probes.choices`
needs no torch.
"""

from importlib import import_module

_EXPORTS = {"Probe": "probes.probe", "ProbeError": "probes.errors", "Recording": "probes.recording",
            "MergedRun": "probes.recording", "Run": "probes.recording", "load_run": "probes.recording",
            "RunError": "probes.store", "write_run": "probes.store", "record": "probes.recorder",
            "record_sweep": "probes.recorder"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
