"""Probe sweeps: shards written by the ranks of torchrun, merged by load_run, equal to one process's sweep."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from analyses.report import write_report
from probe_cli import main
from probes import RunError, load_run
from probes.recording import MergedRun
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.zoo import save_model
from tests.conftest import randomize

SWEEP = ["--layers", "all", "--clip", "0-3", "--context", "2", "--frames", "1", "--steps", "3", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    save_model(randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"])), directory / "model.safetensors")
    return directory


@pytest.fixture(scope="module")
def one_process(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "one"
    assert main(["run", "--model", str(checkpoint), *SWEEP, "--out", str(out)]) == 0
    return out


def assert_same_run(a, b):
    assert a.feature_layers == b.feature_layers and a.attention_layers == b.attention_layers
    for layer in a.feature_layers:
        for what in ("features", "token_cosine", "gram", "attention"):
            torch.testing.assert_close(getattr(a, what)(layer), getattr(b, what)(layer), atol=1e-6, rtol=0)
    key = ["clip", "seed", "layer", "frame", "metric"]
    ma, mb = (m.sort_values(key).reset_index(drop=True) for m in (a.metrics, b.metrics))
    assert ma[key].equals(mb[key])
    torch.testing.assert_close(torch.tensor(ma.value.values), torch.tensor(mb.value.values), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_torchrun_shards_a_sweep_and_the_merged_run_equals_one_process(checkpoint, one_process, tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "probe_cli", "run", "--model", str(checkpoint), *SWEEP, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["shard-00-of-02", "shard-01-of-02"]
    assert sorted(p.name for p in (out / "shard-01-of-02").iterdir()) == ["clip1-seed1", "clip3-seed3", "shard.json"]
    merged, reference = load_run(out), load_run(one_process)
    assert isinstance(merged, MergedRun) and [i["clip"] for i in merged.manifest["sweep"]["items"]] == [0, 1, 2, 3]
    assert_same_run(merged, reference)
    for rank, item in ((0, "clip0-seed0"), (1, "clip3-seed3")):  # each item's own run too, bitwise
        sharded, single = load_run(out / f"shard-0{rank}-of-02" / item), load_run(one_process / "shard-00-of-01" / item)
        for layer in sharded.attention_layers:
            assert torch.equal(sharded.attention(layer), single.attention(layer))
            assert torch.equal(sharded.features(layer), single.features(layer))

def test_the_merged_run_averages_its_items(one_process):
    merged = load_run(one_process)
    items = [load_run(one_process / "shard-00-of-01" / f"clip{c}-seed{c}") for c in range(4)]  # each clip: seed + clip
    for layer in merged.feature_layers:
        expected = torch.stack([run.token_cosine(layer) for run in items]).mean(0)
        torch.testing.assert_close(merged.token_cosine(layer), expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(merged.attention(layer), torch.stack([r.attention(layer) for r in items]).mean(0))
        assert torch.equal(merged.features(layer), items[0].features(layer))  # token features: the first item's
    assert sorted(merged.metrics["clip"].unique()) == [0, 1, 2, 3]
    assert merged.token_cosine(0).shape == items[0].token_cosine(0).shape


def test_probe_show_and_report_read_a_sweep(one_process, tmp_path, capsys):
    assert main(["show", str(one_process)]) == 0
    shown = capsys.readouterr().out
    assert "4 runs (clips [0, 1, 2, 3], seeds [0, 1, 2, 3])" in shown and "std over 4 runs" in shown
    html = write_report([one_process], tmp_path / "report.html").read_text()
    assert "cross-step" in html and "mean of 4 runs (clips [0, 1, 2, 3], seeds [0, 1, 2, 3], 1 shards)" in html


def test_incomplete_sweeps_are_refused(one_process, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(one_process, sweep)
    (sweep / "shard-00-of-01").rename(sweep / "shard-00-of-02")
    with pytest.raises(RunError, match=r"lacks the shards of ranks \[1\] \(of 2\)"):
        load_run(sweep)
    shutil.copytree(one_process / "shard-00-of-01", sweep / "shard-00-of-01")
    with pytest.raises(RunError, match="mixes shards"):
        load_run(sweep)
    shutil.rmtree(sweep / "shard-00-of-02")
    (sweep / "shard-00-of-01" / "shard.json").unlink()
    with pytest.raises(RunError, match="incomplete shard"):
        load_run(sweep)


def test_bad_sweep_flags_and_an_existing_output_are_one_line_errors(checkpoint, one_process, tmp_path, capsys):
    for spec, problem in (("3-1", "range '3-1' is empty"), ("a", "--clip 'a' is not valid"),
                          ("0,0", "--clip: [0, 0] is not accepted; accepted: distinct clip indices"),
                          ("-1", "--clip: [-1] is not accepted")):
        assert main(["run", "--model", str(checkpoint), "--clip", spec, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "x").exists()
    before = sorted(p.name for p in one_process.rglob("*"))
    assert main(["run", "--model", str(checkpoint), *SWEEP, "--out", str(one_process)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in one_process.rglob("*")) == before


def test_a_sweep_goes_into_new_parents_and_force_replaces_it_whole(checkpoint, tmp_path):
    out = tmp_path / "new" / "parents" / "sweep"
    small = ["--layer", "1", "--context", "2", "--frames", "1", "--steps", "2", "--quiet", "--out", str(out)]
    assert main(["run", "--model", str(checkpoint), "--clip", "0-2", *small]) == 0
    assert [i["clip"] for i in load_run(out).manifest["sweep"]["items"]] == [0, 1, 2]
    assert main(["run", "--model", str(checkpoint), "--clip", "5,6", *small, "--force"]) == 0
    assert [i["clip"] for i in load_run(out).manifest["sweep"]["items"]] == [5, 6]  # no item of the old sweep stays
    assert sorted(p.name for p in out.parent.iterdir()) == ["sweep"]


def test_record_sweep_records_what_probe_run_records(checkpoint, one_process, tmp_path):
    """The Python API's sweep (what `probe emergence` measures with) and the command's: the same items, seeds and
    numbers, item by item, for the same clips, frames and steps."""
    from probes import record_sweep
    from scd import load_model

    swept = record_sweep(load_model(checkpoint), tmp_path / "api", range(4), layers="all", context_frames=2, frames=1,
                         steps=3)
    command = load_run(one_process)
    assert [(r.manifest["clip"], r.manifest["seed"]) for r in swept.items] == \
        [(r.manifest["clip"], r.manifest["seed"]) for r in command.items]
    assert_same_run(swept, command)
    for a, b in zip(swept.items, command.items, strict=True):  # item by item, bitwise
        assert all(torch.equal(a.token_cosine(layer), b.token_cosine(layer)) and
                   torch.equal(a.attention(layer), b.attention(layer)) for layer in a.layers)
        assert a.metrics.equals(b.metrics)
    with pytest.raises(ValueError, match="exists"):  # an existing sweep is replaced only with force
        record_sweep(load_model(checkpoint), tmp_path / "api", [0], layers=[1], context_frames=2, frames=1, steps=3)
