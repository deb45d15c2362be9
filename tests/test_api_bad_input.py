"""Bad calls of the Python API are refused at its boundaries: an exception that is a ValueError subclass of the
toolkit's, a message naming the accepted values, and nothing written, moved or changed."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.plan import PlanError, write_plan
from probes import Probe, ProbeError, RunError, load_run, record, record_sweep
from probes.store import write_run
from scd import VideoBenchmark, generate, load_model
from scd.devices import DeviceError
from scd.evaluate import export_checkpoint
from scd.files import OutputError, atomic_directory
from scd.sampling import SamplingError
from scd.training.config import TrainConfig, TrainConfigError, default_config
from scd.training.study import train_study
from scd.training.train import train
from scd.wan.convert import ConversionError, convert
from scd.zoo import CheckpointError, build_model
from tests.conftest import file_tree


def _context(model, frames=2):
    return VideoBenchmark("val", frames=frames, size=model.config.frame_size).clip(0)


def _generate(model, **change):
    kwargs = {"context": _context(model), "frames": 1, "steps": 2, "seed": 0, **change}
    return generate(model, kwargs.pop("context"), kwargs.pop("frames"), **kwargs)


def _probe_then_generate(model, probe_kwargs, steps=2):
    with Probe(model, **probe_kwargs):
        generate(model, _context(model), 2, steps=steps)


CASES = [  # (what is called, exception type, message); `m` is the tiny baseline, `d` a temporary directory
    ("Probe layers=1.5", ProbeError, "accepted: block indices in 0..3",
     lambda m, d: Probe(m, layers=[1.5])),
    ("Probe layers=True", ProbeError, "accepted: block indices", lambda m, d: Probe(m, layers=[True])),
    ("Probe layers='15'", ProbeError, "or 'all'", lambda m, d: Probe(m, layers="15")),
    ("Probe layers=['1']", ProbeError, "(integers)", lambda m, d: Probe(m, layers=["1"])),
    ("Probe layers=[9]", ProbeError, "layer 9 is out of range; accepted", lambda m, d: Probe(m, layers=[9])),
    ("Probe layers=[]", ProbeError, "no layer to probe; accepted", lambda m, d: Probe(m, layers=[])),
    ("Probe layers=[1, 1]", ProbeError, "each once", lambda m, d: Probe(m, layers=[1, 1])),
    ("Probe layers=None", ProbeError, "accepted: block indices", lambda m, d: Probe(m, layers=None)),
    ("Probe capture='logits'", ProbeError, "accepted: features, attention", lambda m, d: Probe(m, layers=[1], capture="logits")),
    ("Probe capture twice", ProbeError, "accepted: features, attention",
     lambda m, d: Probe(m, layers=[1], capture=("features", "features"))),
    ("Probe capture=()", ProbeError, "accepted: features, attention", lambda m, d: Probe(m, layers=[1], capture=())),
    ("Probe mode", ProbeError, "accepted: full, stream", lambda m, d: Probe(m, layers=[1], mode="lazy")),
    ("Probe hook", ProbeError, "accepted: hook_resid_pre", lambda m, d: Probe(m, layers=[1], hook="attn.hook_q")),
    ("Probe backend", ProbeError, "accepted: hookpoints, nnsight", lambda m, d: Probe(m, layers=[1], backend="pyvene")),
    ("Probe hook=5", ProbeError, "accepted: hook_resid_pre", lambda m, d: Probe(m, layers=[1], hook=5)),
    ("Probe on a foreign module", ProbeError, "accepted: the built-in models", lambda m, d: Probe(torch.nn.Linear(2, 2))),
    ("Probe frames='4'", ProbeError, "collection of integers", lambda m, d: Probe(m, layers=[1], frames="4")),
    ("Probe steps=[-1]", ProbeError, "collection of integers", lambda m, d: Probe(m, layers=[1], steps=[-1])),
    ("Probe pca_tokens=0", ProbeError, "accepted: an integer >= 1", lambda m, d: Probe(m, layers=[1], pca_tokens=0)),
    ("Probe a frame generate will not make", ProbeError, "generate makes frames 2..3",
     lambda m, d: _probe_then_generate(m, {"layers": [1], "frames": [9]})),
    ("Probe a step generate will not run", ProbeError, "generate runs steps 0..1",
     lambda m, d: _probe_then_generate(m, {"layers": [1], "steps": [5]})),
    ("generate context list", SamplingError, "accepted", lambda m, d: _generate(m, context=[[0.0]])),
    ("generate context 3-D", SamplingError, "accepted: [T, C, H, W]", lambda m, d: _generate(m, context=torch.zeros(3, 16, 16))),
    ("generate context int", SamplingError, "floating-point",
     lambda m, d: _generate(m, context=torch.zeros(2, 3, 16, 16, dtype=torch.int64))),
    ("generate context NaN", SamplingError, "finite frames",
     lambda m, d: _generate(m, context=torch.full((2, 3, 16, 16), math.nan))),
    ("generate context inf", SamplingError, "finite frames",
     lambda m, d: _generate(m, context=torch.full((2, 3, 16, 16), math.inf))),
    ("generate wrong frame size", SamplingError, "this model takes [3, 16, 16]",
     lambda m, d: _generate(m, context=torch.zeros(2, 3, 32, 32))),
    ("generate frames=-1", SamplingError, "frames: -1 is not accepted; accepted: an integer in 1..",
     lambda m, d: _generate(m, frames=-1)),
    ("generate frames=1.5", SamplingError, "accepted: an integer", lambda m, d: _generate(m, frames=1.5)),
    ("generate steps=0", SamplingError, "accepted: an integer in 1..", lambda m, d: _generate(m, steps=0)),
    ("generate steps=True", SamplingError, "accepted: an integer", lambda m, d: _generate(m, steps=True)),
    ("generate seed=2**70", SamplingError, "accepted: an integer in 0..2**63-1", lambda m, d: _generate(m, seed=2**70)),
    ("generate seed=-1", SamplingError, "accepted: an integer in 0..", lambda m, d: _generate(m, seed=-1)),
    ("generate device meta", DeviceError, "accepted: cpu", lambda m, d: _generate(m, device="meta")),
    ("generate device cuda:7", DeviceError, "accepted: cpu", lambda m, d: _generate(m, device="cuda:7")),
    ("generate device tpu", DeviceError, "accepted: cpu", lambda m, d: _generate(m, device="tpu")),
    ("generate dtype int8", DeviceError, "accepted: torch.float32", lambda m, d: _generate(m, dtype=torch.int8)),
    ("load_model device meta", DeviceError, "accepted: cpu", lambda m, d: load_model("baseline", device="meta")),
    ("load_model dtype float64", DeviceError, "accepted", lambda m, d: load_model("baseline", dtype=torch.float64)),
    ("load_model name 5", CheckpointError, "accepted: baseline", lambda m, d: load_model(5)),
    ("load_model unknown", CheckpointError, "accepted: baseline", lambda m, d: load_model("wan-14b")),
    ("load_model a name too long to look up", CheckpointError, "cannot be looked up (File name too long); accepted",
     lambda m, d: load_model("x" * 300)),
    ("record context of the wrong rank", ProbeError, "accepted: a float tensor [T, C, H, W]",
     lambda m, d: record(m, torch.zeros(2, 3), frames=1, steps=1, layers=[0])),
    ("record shift 0", SamplingError, "shift: 0.0 is not accepted; accepted: a number in [0.001, 1000]",
     lambda m, d: record(m, 0, frames=1, steps=1, layers=[0], context_frames=2, shift=0.0)),
    ("record shift NaN", SamplingError, "shift: nan is not", lambda m, d: record(m, 0, frames=1, steps=1, layers=[0],
                                                                                   context_frames=2, shift=math.nan)),
    ("generate an empty context on a built-in model", SamplingError, "does not generate from nothing",
     lambda m, d: _generate(m, context=torch.zeros(0, 3, 16, 16))),
    ("build_model zero heads", CheckpointError, "heads = 0; accepted",
     lambda m, d: build_model({"family": "baseline", "heads": 0})),
    ("build_model depth 10**9", CheckpointError, "accepted: an integer in 1..512",
     lambda m, d: build_model({"family": "baseline", "depth": 10**9})),
    ("build_model not a dict", CheckpointError, "must be a dict", lambda m, d: build_model(["baseline"])),
    ("load_run nowhere", RunError, "accepted: a directory written by probe run", lambda m, d: load_run(d / "nowhere")),
    ("load_run a file", RunError, "accepted: a directory written by probe run", lambda m, d: load_run(d / "file.txt")),
    ("load_run a foreign directory", RunError, "no manifest.json; accepted", lambda m, d: load_run(d / "mine")),
    ("VideoBenchmark.clip(-1)", ValueError, "accepted: an integer in 0..2147483647", lambda m, d: VideoBenchmark("val").clip(-1)),
    ("VideoBenchmark.clip(1.5)", ValueError, "accepted: an integer", lambda m, d: VideoBenchmark("val").clip(1.5)),
    ("VideoBenchmark.clip(True)", ValueError, "accepted: an integer", lambda m, d: VideoBenchmark("val").clip(True)),
    ("VideoBenchmark.clip(2**40)", ValueError, "accepted: an integer", lambda m, d: VideoBenchmark("val").clip(2**40)),
    ("VideoBenchmark.clip('3')", ValueError, "accepted: an integer", lambda m, d: VideoBenchmark("val").clip("3")),
    ("VideoBenchmark frames=0", ValueError, "frames in 1..4096", lambda m, d: VideoBenchmark("val", frames=0)),
    ("VideoBenchmark split", ValueError, "accepted: train, val", lambda m, d: VideoBenchmark("test")),
    ("write_run over the user's directory", RunError, "not a run directory written by this toolkit",
     lambda m, d: write_run(d / "mine", {}, generated=np.zeros((1, 2, 2, 3), np.uint8),
                            ground_truth=np.zeros((1, 2, 2, 3), np.uint8), force=True)),
    ("write_run under /proc", RunError, "cannot be written",
     lambda m, d: write_run("/proc/run", {}, generated=np.zeros((1, 2, 2, 3), np.uint8),
                            ground_truth=np.zeros((1, 2, 2, 3), np.uint8))),
    ("write_run float video", RunError, "must be uint8",
     lambda m, d: write_run(d / "new", {}, generated=np.zeros((1, 2, 2, 3)), ground_truth=np.zeros((1, 2, 2, 3)))),
    ("atomic_directory over a file", OutputError, "pass --force",
     lambda m, d: atomic_directory(d / "file.txt", "run").__enter__()),
    ("TrainConfig lr=nan", TrainConfigError, "accepted: a finite number", lambda m, d: TrainConfig(lr=math.nan)),
    ("TrainConfig steps=0", TrainConfigError, "accepted: an integer in 1..", lambda m, d: TrainConfig(steps=0)),
    ("TrainConfig batch_size='8'", TrainConfigError, "accepted: an integer", lambda m, d: TrainConfig(batch_size="8")),
    ("default_config family", TrainConfigError, "accepted: baseline, scd", lambda m, d: default_config("wan")),
    ("default_config unknown setting", TrainConfigError, "accepted:", lambda m, d: default_config("baseline", dropout=0.1)),
    ("train over the user's directory", TrainConfigError, "not a training directory written",
     lambda m, d: train(default_config("baseline", size="tiny", steps=1), d / "mine", force=True, progress=False)),
    ("train an unknown size", TrainConfigError, "accepted: tiny, baseline",
     lambda m, d: train(default_config("baseline", size="huge"), d / "t", progress=False)),
    ("train until=0", TrainConfigError, "accepted: a step >= 1",
     lambda m, d: train(default_config("baseline", size="tiny"), d / "t", until=0, progress=False)),
    ("export_checkpoint ../x", CheckpointError, "not a plain name", lambda m, d: export_checkpoint(d / "mine", "../x")),
    ("export_checkpoint not a training run", CheckpointError, "not a training directory",
     lambda m, d: export_checkpoint(d / "mine", "ok")),
    # -- the doors added since (issue 43): probes.record, record_sweep, Recording methods, load_model, the study,
    # convert with a LoRA; `place` holds a toolkit run (myrun) and a user's lock-named file in mystudy/
    ("record a context of the wrong rank", ProbeError, "accepted: a float tensor [T, C, H, W]",
     lambda m, d: record(m, torch.zeros(2, 3, 16), frames=1, steps=2, layers=[1])),
    ("record shift 0", SamplingError, "shift: 0 is not", lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], shift=0)),
    ("record shift nan", SamplingError, "accepted: a number in [0.001, 1000]",
     lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], shift=math.nan)),
    ("record timesteps ending at 0", SamplingError, "accepted: every timestep above 0",
     lambda m, d: record(m, 0, frames=1, layers=[1], timesteps=[900, 0])),
    ("record an unknown option", ProbeError, "record has no option colour; accepted",
     lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], colour="red")),
    ("record info not a dict", ProbeError, "info is a list; accepted: a dict",
     lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], info=[1])),
    ("record info naming the manifest's own entries", ProbeError, "are the recording's own; accepted",
     lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], info={"layers": [3]})),
    ("record info naming what record writes", ProbeError, "which record writes itself; accepted",
     lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], info={"seed": 7})),
    ("record info not JSON", ProbeError, "must be JSON values",
     lambda m, d: record(m, 0, frames=1, steps=2, layers=[1], info={"x": object()})),
    ("record_sweep repeated clips", ProbeError, "distinct clip indices",
     lambda m, d: record_sweep(m, d / "s", clips=[0, 0], frames=1, steps=2, layers=[1])),
    ("record_sweep seed '0'", ProbeError, "seed: '0' is not accepted; accepted",
     lambda m, d: record_sweep(m, d / "s", clips=[0], seed="0", frames=1, steps=2, layers=[1])),
    ("record_sweep over a user's file", ProbeError, "out " , lambda m, d: record_sweep(m, d / "file.txt", clips=[0])),
    ("record_sweep inside a run", ProbeError, "lies inside", lambda m, d: record_sweep(m, d / "myrun" / "s", clips=[0])),
    ("Recording layer '1'", RunError, "is not a block index; accepted", lambda m, d: load_run(d / "myrun").gram("1")),
    ("Recording layer '1.gram'", RunError, "is not a block index; accepted",
     lambda m, d: load_run(d / "myrun").features("1.gram")),
    ("Recording frame True", RunError, "was not recorded", lambda m, d: load_run(d / "myrun").attention(1, True)),
    ("Recording save inside a run", RunError, "lies inside",
     lambda m, d: load_run(d / "myrun").save(d / "myrun" / "copy")),
    ("Recording save over a user's file", RunError, "pass force=True", lambda m, d: load_run(d / "myrun").save(d / "file.txt")),
    ("load_model a name too long", CheckpointError, "cannot be looked up", lambda m, d: load_model("x" * 300)),
    ("load_model an int", CheckpointError, "must be a name or a path", lambda m, d: load_model(3)),
    ("load_model a user's directory", CheckpointError, "checkpoint file missing", lambda m, d: load_model(d / "mine")),
    ("load_model diffusers: nowhere", CheckpointError, "is not a diffusers model directory",
     lambda m, d: load_model(f"diffusers:{d / 'nowhere'}")),
    ("train_study beside a user's lock-named file", TrainConfigError, "in the way of the study's lock",
     lambda m, d: train_study(d / "mystudy", ["reference"], seeds=(0,))),
    ("train_study root inside a run", TrainConfigError, "lies inside",
     lambda m, d: train_study(d / "myrun" / "study", ["reference"], seeds=(0,))),
    ("train_study root a file", TrainConfigError, "is a file", lambda m, d: train_study(d / "file.txt", ["reference"])),
    ("convert lora_alpha nan", ConversionError, "lora_alpha = nan; accepted",
     lambda m, d: convert(d / "file.txt", d / "conv", lora=d / "file.txt", lora_alpha=math.nan)),
    ("convert lora_alpha without a LoRA", ConversionError, "lora_alpha scales a LoRA",
     lambda m, d: convert(d / "file.txt", d / "conv", lora_alpha=2.0)),
    ("convert inside a run", ConversionError, "lies inside", lambda m, d: convert(d / "file.txt", d / "myrun" / "conv")),
    ("write_plan inside a run", PlanError, "lies inside", lambda m, d: write_plan([d / "myrun"], d / "myrun" / "p.json", 0.1)),
]


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    """A run the toolkit wrote (tiny baseline, layer 1), copied into every case's place."""
    from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
    from tests.conftest import randomize

    path = tmp_path_factory.mktemp("a_run") / "run"
    record(randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"])), 0, frames=1, steps=2, layers=[1],
           context_frames=2).save(path)
    return path


@pytest.fixture
def place(tmp_path, a_run):
    shutil.copytree(a_run, tmp_path / "myrun")
    (tmp_path / "mystudy").mkdir()
    (tmp_path / "mystudy" / ".reference-s0.lock").write_text("the user's lock notes")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    (tmp_path / "file.txt").write_text("a file")
    return tmp_path


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name, error, message, call", CASES, ids=[c[0] for c in CASES])
def test_bad_api_calls_are_refused_naming_the_accepted_values(tiny_model, place, name, error, message, call):
    before = file_tree(place)
    checkpoints = Path(__file__).resolve().parents[1] / "scd" / "checkpoints"
    shipped = file_tree(checkpoints, contents=False)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with pytest.raises(error) as caught:
        call(tiny_model, place)
    assert issubclass(error, ValueError) and isinstance(caught.value, ValueError)
    assert message in str(caught.value), str(caught.value)
    assert len(str(caught.value).splitlines()) == 1
    assert file_tree(place) == before and file_tree(checkpoints, contents=False) == shipped
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.state_dict().items())
    assert next(tiny_model.parameters()).device.type == "cpu"  # a refused move leaves the model where it was


def test_a_refused_device_leaves_the_model_usable(tiny_model):
    with pytest.raises(DeviceError):
        _generate(tiny_model, device="meta")
    assert next(tiny_model.parameters()).device.type == "cpu"
    video = _generate(tiny_model)
    assert torch.isfinite(video).all()


def test_a_toolkit_run_is_replaced_only_with_force(tmp_path, tiny_model):
    clip = _context(tiny_model, 4)
    with Probe(tiny_model, layers=[1]) as probe:
        generate(tiny_model, clip[:2], 2, steps=2)
    probe.save(tmp_path / "run", ground_truth=clip)
    with pytest.raises(RunError, match="already exists; pass force=True"):
        probe.save(tmp_path / "run", ground_truth=clip)
    assert probe.save(tmp_path / "run", ground_truth=clip, force=True) == tmp_path / "run"
    assert load_run(tmp_path / "run").manifest["layers"] == [1]
    assert sorted(os.listdir(tmp_path)) == ["run"]
    shutil.rmtree(tmp_path / "run")
    assert json.dumps(sorted(os.listdir(tmp_path))) == "[]"


def test_a_failed_move_leaves_the_model_where_it_was(tiny_model, monkeypatch):
    """A move that fails half way (out of memory, simulated in one block) is undone: no half-converted model."""
    block, calls = tiny_model.blocks[2], []
    original = block._apply

    def fail_once(fn, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(block, "_apply", fail_once)
    with pytest.raises(RuntimeError, match="simulated"):
        _generate(tiny_model, dtype=torch.bfloat16)
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32}
    assert len(calls) == 2  # the move back went through the block too


def test_record_passes_on_exactly_probe_s_own_options():
    """record's list of Probe options is Probe's signature less what record names itself: a new Probe option cannot
    be refused by record, nor a removed one accepted."""
    import inspect

    from probes.recorder import PROBE_OPTIONS

    own = {"self", "model", "layers", "capture", "frames", "steps"}
    assert set(PROBE_OPTIONS) == set(inspect.signature(Probe.__init__).parameters) - own
