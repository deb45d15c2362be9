"""`probe run` and `probe show`: the run directory on disk, bad input, an interrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from probe_cli import main
from probes import load_run
from probes.store import RunError
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.zoo import save_model
from tests.conftest import randomize


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"])), path / "model.safetensors")
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _run(checkpoint, out, *extra):
    layer = [] if {"--layer", "--layers"} & set(extra) else ["--layer", "1"]  # the tiny model has blocks 0..3
    return main(["run", "--model", str(checkpoint), "--context", "2", "--frames", "2", "--steps", "3", "--out", str(out),
                 "--quiet", *layer, *extra])


def test_run_writes_a_complete_run_and_prints_a_table(tiny_checkpoint, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_checkpoint), "--layers", "1,3", "--context", "2", "--frames", "2",
                 "--steps", "3", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "cross-step cosine (mean)" in out and "attention on earlier frames" in out and f"wrote {tmp_path / 'run'}" in out
    run = load_run(tmp_path / "run")
    assert run.feature_layers == run.attention_layers == [1, 3]
    assert run.features(3).shape == (2, 3, 16, 32) and run.attention(1).shape == (2, 3, 2, 4)
    m = run.manifest
    assert (m["clip"], m["seed"], m["split"], m["context"], m["frames"]) == (0, 0, "val", 2, [2, 3])
    assert m["checkpoint"]["sha256"] == json.loads((tiny_checkpoint / "config.json").read_text())["sha256"]
    generated, truth = run.video()
    assert generated.shape == truth.shape == (4, 16, 16, 3)
    assert main(["show", str(tmp_path / "run")]) == 0
    assert "| 3 |" in capsys.readouterr().out.replace("       ", " ").replace("  ", " ")


def test_layers_all_stream_mode_and_the_nnsight_backend(tiny_checkpoint, tmp_path):
    assert _run(tiny_checkpoint, tmp_path / "a", "--layers", "all", "--mode", "stream", "--backend", "nnsight") == 0
    assert _run(tiny_checkpoint, tmp_path / "b", "--layers", "all", "--capture", "attention") == 0
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert a.feature_layers == a.attention_layers == b.attention_layers == [0, 1, 2, 3] and b.feature_layers == []
    assert (a.attention(2) - b.attention(2)).abs().max() <= 1e-6  # two backends, two modes, the same mass


@pytest.mark.parametrize("extra, expected", [
    (["--layer", "4"], "--layer: layer 4 is out of range; accepted: block indices in 0..3 (integers), or 'all'"),
    (["--layer", "-1"], "layer -1 is out of range"),
    (["--layer", "x"], "--layer: 'x' is not valid; accepted: comma-separated block indices, or 'all'"),
    (["--layers", "1.5"], "--layers: '1.5' is not valid; accepted"),
    (["--layers", ""], "--layers: '' is not valid"),
    (["--layers", "1,,2"], "--layers: '1,,2' is not valid"),
    (["--layers", "1,2,1"], "layer 1 is given twice"),
    (["--capture", "features,logits"], "--capture: unknown kind 'logits'; accepted: features, attention"),
    (["--capture", "attention,attention"], "names a kind twice"),
    (["--mode", "lazy"], "invalid choice: 'lazy' (choose from 'auto', 'full', 'stream')"),
    (["--context", "5", "--clip-frames", "4"], "--clip-frames: 4 is not accepted; accepted: an integer in 7..4096"),
    (["--frames", "3", "--clip-frames", "4"], "--clip-frames: 4 is not accepted; accepted: an integer in 5..4096"),
    (["--clip", "0,0"], "--clip: [0, 0] is not accepted; accepted: distinct clip indices"),
    (["--seeds", "0"], "--seeds: 0 is not accepted; accepted: an integer in 1..1000"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_checkpoint, tmp_path, capsys, extra, expected):
    assert _run(tiny_checkpoint, tmp_path / "run", *extra) == 2
    assert expected in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_unknown_model(tmp_path, capsys):
    assert main(["run", "--model", "wan-14b", "--out", str(tmp_path / "run")]) == 2
    assert "unknown model 'wan-14b'; accepted: baseline" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, expected", [
    (["--steps", "0"], "--steps: 0 is not accepted; accepted: an integer in 1..10000"),
    (["--frames", "0"], "--frames: 0 is not accepted; accepted: an integer in 1..100000"),
    (["--context", "0"], "--context: 0: this model does not generate from nothing (no context frame); "
                             "accepted: 1..100000 (0, text-to-video from the prompt alone: the Wan families)"),
    (["--clip", "-2"], "--clip: [-2] is not accepted; accepted: distinct clip indices, each an integer in"),
    (["--layer", "3", "--layers", "1,2"], "not allowed with argument"),
    (["--backend", "pyvene"], "--backend: unknown probe backend 'pyvene'"),
])
def test_bad_flags_are_one_line_exit_2(argv, expected, capsys, tmp_path):
    try:  # argparse's own checks exit; ours return
        code = main(["run", "--out", str(tmp_path / "run"), *argv])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert expected in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_run_is_kept_without_force(tiny_checkpoint, tmp_path, capsys):
    assert _run(tiny_checkpoint, tmp_path / "run", "--seed", "1") == 0
    manifest = (tmp_path / "run" / "manifest.json").read_bytes()
    assert _run(tiny_checkpoint, tmp_path / "run", "--seed", "2") == 2
    assert "already exists; pass --force to replace it" in _error(capsys)
    assert (tmp_path / "run" / "manifest.json").read_bytes() == manifest
    assert _run(tiny_checkpoint, tmp_path / "run", "--seed", "2", "--force") == 0
    assert load_run(tmp_path / "run").manifest["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left behind
    (tmp_path / "empty").mkdir()
    assert _run(tiny_checkpoint, tmp_path / "empty") == 0  # an empty directory is not a run to protect


def test_an_unwritable_out_is_refused(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert _run(tiny_checkpoint, tmp_path / "file" / "run") == 2
    assert "cannot be written" in _error(capsys)
    assert _run(tiny_checkpoint, tmp_path / "file") == 2
    assert "already exists; pass --force" in _error(capsys)
    assert _run(tiny_checkpoint, tmp_path / "file", "--force") == 2
    assert "is not a run directory written by this toolkit" in _error(capsys)
    assert (tmp_path / "file").read_text() == "not a directory"


def test_show_refuses_a_broken_run(tiny_checkpoint, tmp_path, capsys):
    assert _run(tiny_checkpoint, tmp_path / "run") == 0
    (tmp_path / "run" / "video.npz").unlink()
    assert main(["show", str(tmp_path / "run")]) == 2
    assert "is missing video.npz" in _error(capsys)
    (tmp_path / "run" / "manifest.json").write_text("{not json")
    assert main(["show", str(tmp_path / "run")]) == 2
    assert "manifest.json is not valid JSON" in _error(capsys)
    assert main(["show", str(tmp_path / "nowhere")]) == 2
    assert "is not a run directory" in _error(capsys)


def test_killing_a_run_leaves_nothing_that_loads_and_a_rerun_succeeds(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "probe_cli", "run", "--model", str(tiny_checkpoint), "--steps", "100",
            "--layers", "all", "--out", str(out)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    line = ""
    while "step" not in line and time.time() < deadline:  # wait until the progress bar shows it is generating
        line = proc.stderr.read(64)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "step" in line and proc.returncode == -signal.SIGKILL
    with pytest.raises(RunError):
        load_run(out)
    assert subprocess.run(argv, capture_output=True).returncode == 0  # the same command, run again
    assert load_run(out).manifest["complete"] is True


@pytest.mark.slow
def test_the_default_run_probes_the_shipped_baseline(tmp_path, capsys):
    """`probe run --layer 15`: the shipped baseline, val clip 0, 4 + 4 frames, 50 steps, seed 0, both captures."""
    from scd.zoo import CHECKPOINT_DIR

    assert main(["run", "--layer", "15", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = load_run(tmp_path / "run")
    m = run.manifest
    assert (m["model"], m["clip"], m["seed"], m["context"], m["frames"], m["layers"]) == ("baseline", 0, 0, 4, [4, 5, 6, 7], [15])
    assert m["steps"] == list(range(50)) and m["capture"] == ["features", "attention"] and m["mode"] == "full"
    assert m["checkpoint"]["sha256"] == json.loads((CHECKPOINT_DIR / "baseline.json").read_text())["sha256"]
    assert run.features(15).shape == (4, 50, 64, 128) and run.attention(15).shape == (4, 50, 4, 8)


def test_a_sweep_gives_each_clip_and_draw_its_own_noise(tiny_checkpoint, tmp_path):
    """--clip 0-1 --seeds 2 --seed 5: clip c's draw j is denoised from seed 5 + c + j * 2^31, recorded in each manifest;
    the same clip's two draws differ, and a single run of clip 1 is clip 1's first draw of the sweep, bit for bit."""
    import numpy as np

    assert _run(tiny_checkpoint, tmp_path / "sweep", "--clip", "0-1", "--seeds", "2", "--seed", "5") == 0
    sweep = load_run(tmp_path / "sweep")
    seeds = {(i.manifest["clip"], i.manifest["seed"], i.manifest["generation"]["noise_seed"]) for i in sweep.items}
    assert seeds == {(0, 5, 5), (0, 5 + 2**31, 5 + 2**31), (1, 6, 6), (1, 6 + 2**31, 6 + 2**31)}
    videos = {(i.manifest["clip"], i.manifest["seed"]): i.video()[0] for i in sweep.items}
    assert not np.array_equal(videos[(0, 5)][2:], videos[(0, 5 + 2**31)][2:])  # generated frames: other noise
    assert _run(tiny_checkpoint, tmp_path / "one", "--clip", "1", "--seed", "5") == 0
    assert np.array_equal(load_run(tmp_path / "one").video()[0], videos[(1, 6)])


def test_the_permuted_control_is_recorded(tiny_checkpoint, tmp_path):
    assert _run(tiny_checkpoint, tmp_path / "ctl", "--control", "permuted", "--control-seed", "3") == 0
    m = load_run(tmp_path / "ctl").manifest
    assert m["control"]["kind"] == "permuted" and m["control"]["seed"] == 3 and "permuted weights, seed 3" in m["model"]
    assert _run(tiny_checkpoint, tmp_path / "plain") == 0
    assert load_run(tmp_path / "plain").manifest.get("control") is None


def _without_command(manifest: dict) -> dict:
    """A manifest less the command line, which only the CLI knows."""
    return {key: value for key, value in manifest.items() if key != "command"}


@pytest.mark.parametrize("flags, options", [
    ((), {}),
    (("--clip", "2", "--seed", "7", "--capture", "attention", "--bands", "2"),
     {"clip": 2, "seed": 7, "capture": ["attention"], "bands": 2}),
    (("--timesteps", "1000,600,200", "--sampler", "renoise", "--window", "3", "--sink-frames", "1", "--frames", "4"),
     {"timesteps": [1000.0, 600.0, 200.0], "sampler": "renoise", "window": (3, 1), "frames": 4}),
    (("--size", "wan-tiny", "--latent-size", "8x8", "--clip", "1", "--mode", "stream"),
     {"size": "wan-tiny", "clip": 1, "mode": "stream"}),
], ids=["defaults", "clip-seed-attention", "few-step-window", "random-latents"])
def test_probe_run_and_record_save_write_the_same_manifest(tiny_checkpoint, tmp_path, flags, options):
    """One path from settings to a run: `probe run` is `probes.record_passes` plus printing, so the manifest it writes
    (every entry, the files' digests included) is the one `probes.record(...).save()` writes with the same settings."""
    import probes
    from probe_cli.checks import size_latent
    from scd.contract import CachePolicy
    from scd.zoo import load_model, random_model

    model_flags = () if "size" in options else ("--model", str(tiny_checkpoint))
    frames = options.get("frames", 2)
    argv = ["run", *model_flags, "--context", "2", "--steps", "3", "--out", str(tmp_path / "cli"), "--quiet",
            "--layer", "1", *(("--frames", "2") if "frames" not in options else ()), *flags]
    assert main(argv) == 0
    if "size" in options:  # what --size builds: the baseline family at that size, seeded random weights
        height, width = size_latent(options["size"], (8, 8))
        model = random_model("baseline", options["size"], frame_size=height, frame_width=width)
    else:
        model = load_model(tiny_checkpoint)
    window = options.get("window")
    rec = probes.record(model, options.get("clip", 0), seed=options.get("seed", 0), frames=frames,
                        steps=len(options.get("timesteps", [0] * 3)), context_frames=2, layers=[1],
                        capture=options.get("capture", ("features", "attention")), bands=options.get("bands", 3),
                        mode=options.get("mode", "full"), timesteps=options.get("timesteps"),
                        sampler=options.get("sampler", "ode"),
                        cache_policy=CachePolicy(*window) if window else None,
                        context_source="latent noise" if "size" in options else "auto")
    rec.save(tmp_path / "api")
    cli, api = load_run(tmp_path / "cli").manifest, load_run(tmp_path / "api").manifest
    assert _without_command(cli) == _without_command(api)
    assert api["generation"]["window"] == (window[0] if window else None)  # the report's "KV cache" line reads it


def test_a_sweep_from_probe_run_is_record_sweep(tiny_checkpoint, tmp_path):
    """`probe run --clip 0-1 --seeds 2` and `probes.record_sweep(model, out, [0, 1], draws=2)`: the same items, each
    with the same manifest."""
    import probes
    from scd.zoo import load_model

    assert _run(tiny_checkpoint, tmp_path / "cli", "--clip", "0-1", "--seeds", "2", "--seed", "5") == 0
    probes.record_sweep(load_model(tiny_checkpoint), tmp_path / "api", [0, 1], draws=2, seed=5, frames=2, steps=3,
                        context_frames=2, layers=[1])
    cli, api = load_run(tmp_path / "cli"), load_run(tmp_path / "api")
    by_item = {(i.manifest["clip"], i.manifest["seed"]): _without_command(i.manifest) for i in api.items}
    assert len(cli.items) == 4 and {(i.manifest["clip"], i.manifest["seed"]): _without_command(i.manifest)
                                    for i in cli.items} == by_item
