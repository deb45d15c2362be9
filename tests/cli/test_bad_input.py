"""Every class of bad input, for every command: exit code 2, one line on stderr naming the problem and the accepted
values, no traceback, and the file tree (target, parent, siblings) byte-identical before and after.

Each case runs in a sandbox (the working directory) that holds what a user's directory might: a run the toolkit
wrote, a directory of the user's, a file, a dangling link, a report and a PNG of the user's. Placeholders in argv:
{base} / {scd}: tiny checkpoints, {bad:NAME}: a damaged checkpoint (BAD_CHECKPOINTS), {run}: a good run,
{broken:NAME}: a damaged run (BROKEN_RUNS), {train}: a training directory.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from probe_cli import main
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.zoo import save_model
from tests.conftest import file_tree, randomize

TINY = ["--context", "2", "--frames", "2", "--steps", "2"]
LONG = "n" * 250  # a name that fits alone, but not once the hidden temporary suffix is added
# Words by which a refusal names the accepted values or the way out.
NAMES_THE_WAY = ("accepted", "choose from", "pass --force", "run it again", "--resume", "expected one argument",
                 "required", "not allowed with", "unrecognized arguments", "through existing directories")

BAD_CONFIGS = {  # a config field changed -> a checkpoint of the tiny baseline whose config says so
    "negative_width": {"width": -32}, "zero_heads": {"heads": 0}, "huge_depth": {"depth": 10**9},
    "odd_heads": {"heads": 3}, "string_width": {"width": "32"}, "bool_depth": {"depth": True},
    "nan_ratio": {"mlp_ratio": float("nan")}, "unknown_field": {"dropout": 0.1}, "unknown_family": {"family": "unet"},
    "patch_misfit": {"patch_size": 5}, "huge_width": {"width": 16384, "depth": 512},
}
BAD_WEIGHTS = {"int8": torch.int8, "bool": torch.bool, "nan": "nan", "inf": "inf"}


_tree = file_tree  # every byte of the sandbox and the material hashed before and after each case


@pytest.fixture(scope="module")
def material(tmp_path_factory, tiny_checkpoints):
    """Checkpoints, runs and directories the cases point at; built once, outside the sandbox."""
    root = tmp_path_factory.mktemp("material")
    base, scd = tiny_checkpoints
    paths = {"base": base, "scd": scd}
    for name, change in BAD_CONFIGS.items():
        shutil.copytree(base, root / name)
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, **change}))
        paths[f"bad:{name}"] = root / name
    for name, kind in BAD_WEIGHTS.items():
        model = randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]))
        save_model(model, root / name / "model.safetensors")
        state = load_file(root / name / "model.safetensors")
        key = sorted(state)[0]
        state[key] = state[key].to(kind) if isinstance(kind, torch.dtype) else torch.full_like(state[key], float(kind))
        save_file(state, root / name / "model.safetensors")
        config = json.loads((root / name / "config.json").read_text())
        config.pop("sha256")  # the weights were changed on purpose: let the dtype / value check speak
        (root / name / "config.json").write_text(json.dumps(config))
        paths[f"bad:{name}"] = root / name
    truncated = root / "truncated"
    shutil.copytree(base, truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:500])
    paths["bad:truncated"] = truncated
    paths["bad:noconfig"] = root / "noconfig"
    shutil.copytree(base, root / "noconfig")
    (root / "noconfig" / "config.json").unlink()

    for name, seed in (("run", 0), ("other", 1)):
        assert main(["run", "--model", str(base), "--layer", "1", *TINY, "--seed", str(seed), "--quiet",
                     "--out", str(root / name)]) == 0
    paths["run"] = root / "run"
    broken = {
        "swapped": lambda d: shutil.copy(root / "other" / "features.safetensors", d / "features.safetensors"),
        "missing_layer": lambda d: _edit(d, layers=[1, 2], layer_roles=["causal", "causal"]),
        "truncated_attention": lambda d: (d / "attention.safetensors").write_bytes(
            (d / "attention.safetensors").read_bytes()[:100]),
        "garbage_manifest": lambda d: (d / "manifest.json").write_bytes(b"\x00\xffnot json"),
        "manifest_list": lambda d: (d / "manifest.json").write_text("[1, 2]"),
        "wrong_types": lambda d: _edit(d, steps="0,1"),
        "no_video": lambda d: (d / "video.npz").unlink(),
        "old_format": lambda d: _edit(d, format="scd-probes-run/1"),
        "incomplete": lambda d: _edit(d, complete=False),
        "shorter_steps": lambda d: _edit(d, steps=[0], timesteps=[1000.0]),
        # damaged, then re-hashed into the manifest: the content itself must be refused
        "garbage_parquet": lambda d: _rehash(d, "metrics.parquet", b"PAR1 not a table PAR1"),
        "nan_attention": lambda d: _rehash_tensors(d, "attention.safetensors", "layer1", float("nan")),
        "unnormalised_attention": lambda d: _rehash_tensors(d, "attention.safetensors", "layer1", 0.5),
        "garbage_video": lambda d: _rehash(d, "video.npz", b"PK\x03\x04 not a zip"),
        "bad_grid": lambda d: _edit(d, token_grid=[3, 5]),
        "string_metrics": lambda d: _rehash(d, "metrics.parquet", _string_metrics(d)),
    }
    for name, damage in broken.items():
        shutil.copytree(root / "run", root / f"broken-{name}")
        damage(root / f"broken-{name}")
        paths[f"broken:{name}"] = root / f"broken-{name}"
    train = root / "train"
    assert main(["train", "baseline", "--size", "tiny", "--steps", "1", "--batch-size", "1", "--frames", "2",
                 "--quiet", "--out", str(train)]) == 0
    paths["train"] = train
    from tests.scd.test_causal_wan import original_layout
    from tests.wan_tiny import tiny

    original = original_layout(tiny("wan").state_dict())
    save_file(original, root / "wan.safetensors")
    paths["wan"] = root / "wan.safetensors"
    _new_doors_material(root, paths, original)
    return root, paths


def _new_doors_material(root: Path, paths: dict, original: dict) -> None:
    """Damaged inputs of the doors added since the first table: LoRA adapters ({lora:NAME}), plans ({plan:NAME}),
    a study whose run holds a damaged training checkpoint ({study:damaged})."""
    from tests.analyses.test_plan import _damaged
    from tests.scd.test_convert_checks import _adapter

    lora = _adapter(original, 2)
    loras = {
        "overflow": ({"generator_lora": {k: v * 1e20 for k, v in lora.items()}, "lora_alpha": 2.0}, "pt"),
        "inf": ({"generator_lora": {k: v.clone().fill_(float("inf")) for k, v in lora.items()}, "lora_alpha": 2.0}, "pt"),
        "rank0": ({"generator_lora": {k: v[:0] if k.endswith("lora_A.weight") else v[:, :0] for k, v in lora.items()},
                   "lora_alpha": 2.0}, "pt"),
        "nan_alpha": (lora, "nan"),
        "text": (None, "text"),
    }
    (root / "lora").mkdir()
    for name, (content, kind) in loras.items():
        if kind == "pt":
            torch.save(content, root / "lora" / f"{name}.pt")
            paths[f"lora:{name}"] = root / "lora" / f"{name}.pt"
            continue
        target = root / "lora" / f"{name}.safetensors"
        if kind == "nan":
            save_file(content, target, metadata={"lora_alpha": "nan"})
        else:
            target.write_text("my LoRA notes")
        paths[f"lora:{name}"] = target
    sound = json.loads((Path(__file__).parents[2] / "reports" / "plan" / "plan.json").read_text())
    (root / "plans").mkdir()
    for name, where, value in (("nan_ratio", "magcache.mag_ratios.2", float("nan")),
                               ("string_clip", "calibration.items.0.clip", "0"),
                               ("no_calibration", "calibration", "DELETE"),
                               ("wrong_checkpoint", "checkpoint", "sha")):
        (root / "plans" / f"{name}.json").write_text(json.dumps(_damaged(sound, where, value)))
        paths[f"plan:{name}"] = root / "plans" / f"{name}.json"
    run = root / "study-damaged" / "reference-s0"
    run.mkdir(parents=True)
    (run / "train_state.safetensors").write_bytes(b"not a checkpoint")
    paths["study:damaged"] = root / "study-damaged"


def _string_metrics(run: Path) -> bytes:
    """The run's metrics table with its values written as text (a forged table pandas still reads)."""
    import io

    import pandas as pd

    table = pd.read_parquet(run / "metrics.parquet")
    table["value"] = table["value"].astype(str)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _rehash(run: Path, name: str, content: bytes) -> None:
    """Replace a data file and write its new size and sha256 into the manifest, as an adversary would."""
    (run / name).write_bytes(content)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (run / "manifest.json").write_text(json.dumps(manifest))


def _rehash_tensors(run: Path, name: str, key: str, value: float) -> None:
    tensors = load_file(run / name)
    tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, run / name)
    _rehash(run, name, (run / name).read_bytes())


def _edit(run: Path, **change) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, **change}))


@pytest.fixture
def sandbox(tmp_path, material, monkeypatch):
    """The working directory of a case: a toolkit run, the user's own directory, file, link, report and PNG."""
    shutil.copytree(material[1]["run"], tmp_path / "myrun")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own notes")
    (tmp_path / "file.txt").write_text("a file of the user's")
    (tmp_path / "page.html").write_text("<html>the user's page</html>")
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "dir")
    _look_alikes(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _look_alikes(root: Path) -> None:
    """A user's files that only look like the toolkit's: a backup `.NAME.old` beside an output and beside a missing
    one, temporaries `.NAME.PID.X.tmp` of a dead PID (directory and file, unsigned), directories that hold a file
    named like a kind's marker (manifest.json; config.json and train.json; a converted model's three files)."""
    for name in (".myrun.old", ".new.old", ".myrun.999999999.abc.tmp", ".page.html.old", ".r.html.999999999.x.tmp"):
        (root / name).mkdir()
        (root / name / "precious.txt").write_text("the user's")
    (root / ".new.999999999.abc.tmp").write_text("the user's")
    (root / "fake-run").mkdir()
    (root / "fake-run" / "manifest.json").write_text('{"mine": true}')
    (root / "fake-train").mkdir()
    (root / "fake-train" / "config.json").write_text('{"lr": 1}')
    (root / "fake-train" / "train.json").write_text('{"steps": 3}')
    (root / "fake-converted").mkdir()
    for name in ("config.json", "convert.json"):
        (root / "fake-converted" / name).write_text('{"source": "my notes"}')
    (root / "fake-converted" / "diffusion_pytorch_model.safetensors").write_bytes(b"my bytes")
    # beside the newer doors' outputs: a user's file named like a study lock (in a study root of the user's, and in
    # one of earlier study runs), a plan's and a converted model's temporaries and backups of a dead PID
    for study in ("mystudy", "oldstudy"):
        (root / study).mkdir()
        (root / study / ".reference-s0.lock").write_text("the user's lock notes")
    (root / "oldstudy" / "reference-s1").mkdir()
    (root / ".p.json.999999999.abc.tmp").write_text("the user's")
    (root / ".p.json.old").write_text("the user's")
    (root / ".conv.999999999.abc.tmp").mkdir()
    (root / ".conv.old").mkdir()


# (argv, what the one line must say). Classes: O output paths, N names, U numbers (ranges, NaN, inf, 64 bits,
# memory), C choices and flags that do not apply, K checkpoints, R run directories, T training.
CASES = [
    # -- probe run
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "myrun"], "already exists; pass --force"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "mine", "--force"], "not a run directory written by"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "file.txt", "--force"], "not a run directory written"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "/proc/run"], "cannot be written"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "dangling"], "symbolic link"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "dangling/run"], "dangling symbolic link"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "."], "names no file or directory"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", ".."], "names no file or directory"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", LONG], "File name too long"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "file.txt/run"], "is a file, not a directory"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--clip", "0,1", "--out", "mine", "--force"],
     "not a sweep directory written"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--clip", "0,1", "--out", "myrun", "--force"],
     "not a sweep directory written"),
    ("U", ["run", "--steps", "0"], "--steps: 0 is not accepted; accepted: an integer in 1..10000"),
    ("U", ["run", "--steps", "10001"], "accepted: an integer in 1..10000"),
    ("U", ["run", "--steps=-3"], "accepted: an integer in 1..1000"),
    ("U", ["run", "--steps", "nan"], "is not an integer"),
    ("U", ["run", "--steps", "inf"], "is not an integer"),
    ("U", ["run", "--steps", "1e3"], "is not an integer"),
    ("U", ["run", "--steps", "2.5"], "is not an integer"),
    ("U", ["run", "--steps", "1_000"], "is not an integer"),
    ("U", ["run", "--steps", "\u0663"], "is not an integer"),  # an Arabic-Indic digit: int() would take it
    ("U", ["run", "--frames", str(2**70)], "accepted: an integer in 1..100000"),
    ("U", ["run", "--context", "0"], "does not generate from nothing"),
    ("U", ["run", "--clip-frames", "1"], "--clip-frames: 1 is not accepted; accepted: an integer in 8..4096"),
    ("U", ["run", "--seed", str(2**70)], "is not accepted; accepted: an integer in 0..2**63-1"),
    ("U", ["run", "--seed", "-1"], "--seed: -1 is not accepted; accepted: an integer in 0..2**63-1"),
    ("U", ["run", "--seed", "0-99999"], "is not an integer"),  # one base seed: each clip draws seed + clip
    ("U", ["run", "--seed", "0,1"], "is not an integer"),
    ("U", ["run", "--seeds", "0"], "--seeds: 0 is not accepted; accepted: an integer in 1..1000"),
    ("U", ["run", "--seeds", "1001"], "accepted: an integer in 1..1000"),
    ("U", ["run", "--seed", str(2**63 - 2), "--clip", "5"], "64-bit seed range"),
    ("U", ["run", "--control", "shuffled"], "invalid choice"),
    ("U", ["run", "--control", "permuted", "--size", "wan1.3b"], "--size already gives random weights"),
    ("U", ["run", "--control-seed", "-1"], "out of range; accepted"),
    ("U", ["run", "--clip", str(2**40)], "accepted: distinct clip indices, each an integer in 0..2147483647"),
    ("U", ["run", "--clip", "5-2"], "is empty; accepted"),
    ("U", ["run", "--clip", "1,1"], "--clip: [1, 1] is not accepted; accepted: distinct clip indices"),
    ("U", ["run", "--clip=--"], "'--' is not a value"),  # argparse alone would drop it and take the default
    ("U", ["run", "--clip", "0-9999", "--seeds", "2"], "at most 10000"),
    ("U", ["run", "--model", "{base}", "--layer", "1", "--frames", "1024", "--steps", "1000", "--context", "1000",
           "--clip-frames", "2048", "--out", "big"], "GiB, but"),
    ("U", ["run", "--model", "{base}", "--layers", "all", "--steps", "1000", "--frames", "1000", "--out", "big"],
     "GiB, but"),
    ("U", ["run", "--timesteps", "500,750"], "strictly decreasing"),
    ("U", ["run", "--timesteps", "1000,nan"], "is not valid; accepted"),
    ("U", ["run", "--timesteps", "1001,500"], "--timesteps: [1001.0, 500.0] is not accepted; accepted"),
    ("U", ["run", "--timesteps", "1000,757,522,0"], "ends at 0, which is no denoising step"),  # CausVid: its 0 dropped
    ("C", ["run", "--model", "diffusers:mine", "--context", "0", "--context-video", "clip.mp4"],
     "--context-video gives context frames, --context 0 none"),
    ("U", ["run", "--context", "-1"], "accepted: an integer in 1..100000"),
    ("C", ["run", "--control-seed", "3"], "--control-seed seeds the permuted-weights control"),
    ("U", ["run", "--timesteps", "1000,500", "--steps", "3"], "--steps: 3 but --timesteps lists 2"),
    ("C", ["run", "--warp"], "--warp: maps an explicit timestep list; accepted: with --timesteps"),
    ("C", ["run", "--sampler", "dmd"], "--sampler: unknown sampler 'dmd'; accepted: ode, renoise"),
    ("C", ["run", "--sink-frames", "2"], "need a window; accepted: a window (--window N)"),
    ("C", ["run", "--rope", "cache"], "need a window; accepted: a window (--window N)"),
    ("U", ["run", "--window", "2", "--sink-frames", "2"], "window = 2; accepted: an integer in 3..100000"),
    ("U", ["run", "--window", "0"], "accepted: an integer in 1..100000"),
    ("U", ["run", "--shift", "0"], "accepted"),
    ("R", ["plan", "nowhere"], "is not a run directory"),
    ("O", ["plan", "{base}", "--out", "plan.txt"], "is not a .json file"),
    ("U", ["plan", "{base}", "--budget", "-1"], "accepted"),
    ("C", ["intervene", "--budget", "0.1"], "--budget sets a plan's drift budgets"),
    ("R", ["intervene", "--plan", "file.txt"], "cannot be read as a plan"),
    ("U", ["run", "--latent-size", "0x8"], "accepted: two integers in 1..1024"),
    ("U", ["run", "--latent-size", "99999x8"], "accepted: two integers in 1..1024"),
    ("U", ["run", "--model", "{base}", *TINY, "--layers", "1,9"], "layer 9 is out of range; accepted"),
    ("U", ["run", "--model", "{base}", *TINY, "--layers", "-1"], "out of range; accepted"),
    ("U", ["run", "--layers", "1.5"], "accepted: comma-separated block indices"),
    ("U", ["run", "--layers", "1,,2"], "accepted: comma-separated block indices"),
    ("U", ["run", "--layer", ""], "accepted: comma-separated block indices"),
    ("U", ["run", "--model", "{base}", *TINY, "--layers", "1,2,1"], "given twice"),
    ("U", ["run", "--context", "4", "--clip-frames", "4"], "--clip-frames: 4 is not accepted; accepted: an integer in 8..4096"),
    ("C", ["run", "--device", "meta"], "accepted: cpu, cuda, cuda:N, mps"),
    ("C", ["run", "--device", "tpu"], "accepted: cpu, cuda, cuda:N, mps"),
    ("C", ["run", "--device", "cuda:99"], "cannot be used here; accepted"),
    ("C", ["run", "--device", "mps"], "cannot be used here; accepted"),
    ("C", ["run", "--dtype", "float64"], "choose from"),
    ("C", ["run", "--dtype", "int8"], "choose from"),
    ("C", ["run", "--mode", "lazy"], "choose from"),
    ("C", ["run", "--backend", "pyvene"], "--backend: unknown probe backend 'pyvene'; accepted: hookpoints, nnsight"),
    ("C", ["run", "--capture", "logits"], "unknown kind 'logits'; accepted: features, attention"),
    ("C", ["run", "--capture", "features,features"], "names a kind twice"),
    ("C", ["run", "--model", "{base}", *TINY, "--layer", "1", "--hook", "hook_nope"], "unknown feature hook"),
    ("C", ["run", "--latent-size", "8x8"], "applies only to diffusers models"),
    ("C", ["run", "--text-embeddings", "file.txt"], "applies only to diffusers models"),
    ("C", ["run", "--layer", "1", "--layers", "1,2"], "not allowed with"),
    ("C", ["run", "--model", "nope"], "unknown model 'nope'; accepted"),
    ("C", ["run", "--size", "wan1.3b", "--model", "baseline"], "accepted: one of them"),
    ("C", ["run", "--size", "wan1.3b", "--latent-size", "5x8", "--out", "r"], "multiple of 2"),
    ("C", ["run", "--size", "wan1.3b", "--scene", "textured", "--out", "r"], "accepted: no --scene"),
    ("U", ["run", "--size", "wan7b"], "choose from"),
    ("C", ["run", "--model", "diffusers:mine"], "no config.json"),
    ("K", ["run", "--model", "{bad:negative_width}"], "width = -32; accepted"),
    ("K", ["run", "--model", "{bad:zero_heads}"], "heads = 0; accepted"),
    ("K", ["run", "--model", "{bad:huge_depth}"], "depth = 1000000000; accepted"),
    ("K", ["run", "--model", "{bad:odd_heads}"], "even whole head dimension"),
    ("K", ["run", "--model", "{bad:string_width}"], "width = '32'; accepted: an integer"),
    ("K", ["run", "--model", "{bad:bool_depth}"], "depth = True; accepted: an integer"),
    ("K", ["run", "--model", "{bad:nan_ratio}"], "mlp_ratio = nan; accepted"),
    ("K", ["run", "--model", "{bad:unknown_field}"], "unknown baseline config fields ['dropout']"),
    ("K", ["run", "--model", "{bad:unknown_family}"], "unknown model family 'unet'; accepted"),
    ("K", ["run", "--model", "{bad:patch_misfit}"], "does not divide frame_size"),
    ("K", ["run", "--model", "{bad:huge_width}"], "GiB, but"),
    ("K", ["run", "--model", "{bad:int8}"], "is int8; accepted: float32"),
    ("K", ["run", "--model", "{bad:bool}"], "is bool; accepted: float32"),
    ("K", ["run", "--model", "{bad:nan}"], "NaN or infinite values; accepted: finite"),
    ("K", ["run", "--model", "{bad:inf}"], "NaN or infinite values; accepted: finite"),
    ("K", ["run", "--model", "{bad:truncated}"], "sha256"),
    ("K", ["run", "--model", "{bad:noconfig}"], "checkpoint file missing"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "fake-run", "--force"], "not a run directory"),
    ("O", ["run", "--model", "{base}", *TINY, "--layer", "1", "--out", "myrun/inner"], "lies inside"),
    # -- probe show and probe report
    ("R", ["show", "new"], "is not a run directory"),  # `.new.old` beside it is the user's, not a backup to restore
    ("R", ["show", ".myrun.old"], "no manifest.json"),
    ("R", ["report", "{run}", "{run}", "-o", "r.html"], "given twice"),
    ("R", ["report", "myrun", "./myrun", "-o", "r.html"], "given twice"),
    ("O", ["report", "{run}", "-o", "myrun/report.html"], "lies inside"),
    ("R", ["show", "{broken:swapped}"], "sha256 differs"),
    ("R", ["show", "{broken:missing_layer}"], "lacks layer2"),
    ("R", ["show", "{broken:truncated_attention}"], "size differs"),
    ("R", ["show", "{broken:garbage_manifest}"], "is not valid JSON"),
    ("R", ["show", "{broken:manifest_list}"], "not a run directory of this toolkit"),
    ("R", ["show", "{broken:wrong_types}"], "steps is '0,1'; accepted"),
    ("R", ["show", "{broken:no_video}"], "is missing video.npz"),
    ("R", ["show", "{broken:old_format}"], "run it again"),
    ("R", ["show", "{broken:incomplete}"], "incomplete run"),
    ("R", ["show", "{broken:shorter_steps}"], "has shape"),
    ("R", ["show", "mine"], "no manifest.json; accepted"),
    ("R", ["show", "{broken:garbage_parquet}"], "cannot be read as a table"),
    ("R", ["show", "{broken:nan_attention}"], "NaN or infinite"),
    ("R", ["show", "{broken:unnormalised_attention}"], "is not attention mass"),
    ("R", ["show", "{broken:bad_grid}"], "token_grid"),
    ("R", ["show", "{broken:string_metrics}"], "metrics.parquet holds a value column of str"),
    ("R", ["report", "{broken:nan_attention}", "-o", "r.html"], "NaN or infinite"),
    ("R", ["report", "{broken:unnormalised_attention}", "-o", "r.html"], "is not attention mass"),
    ("R", ["report", "{broken:garbage_video}", "-o", "r.html"], "video.npz cannot be read"),
    ("R", ["report", "{broken:garbage_parquet}", "-o", "r.html"], "cannot be read as a table"),
    ("R", ["show", "file.txt"], "is not a run directory"),
    ("R", ["report", "{broken:swapped}", "-o", "r.html"], "sha256 differs"),
    ("R", ["report", "{broken:missing_layer}", "-o", "r.html"], "lacks layer2"),
    ("R", ["report", "{run}", "--bench", "mine", "-o", "r.html"], "not a bench directory"),
    ("R", ["report", "{run}", "--interventions", "{run}", "-o", "r.html"], "not a directory written by probe intervene"),
    ("O", ["report", "{run}", "-o", "page.html"], "already exists; pass --force"),
    ("O", ["report", "{run}", "-o", "page.html", "--force"], "not a report written by this toolkit"),
    ("O", ["report", "{run}", "-o", "r.pdf"], "accepted: a path ending in .html"),
    ("O", ["report", "{run}", "-o", "/proc/r.html"], "cannot be written"),
    ("O", ["report", "{run}", "-o", "mine"], "accepted: a path ending in .html"),
    ("O", ["report", "{run}", "-o", "file.txt/r.html"], "is a file"),
    # -- probe bench and probe intervene
    ("U", ["bench", "--frames", "1"], "accepted: an integer in 2..1024"),
    ("U", ["bench", "--steps", "4,4"], "distinct comma-separated integers"),
    ("U", ["bench", "--steps", "0,4"], "each in 1..1000"),
    ("U", ["bench", "--context", "a"], "distinct comma-separated integers"),
    ("U", ["bench", "--repeats", "0"], "accepted: an integer in 1..100"),
    ("U", ["bench", "--samples", "1e9"], "is not an integer"),
    ("C", ["bench", "--baseline", "{base}", "--scd", "{base}", "--out", "b"], "same model"),
    ("C", ["bench", "--device", "meta"], "accepted: cpu, cuda"),
    ("C", ["bench", "--size", "wan1.3b", "--baseline", "{base}", "--out", "b"], "not both"),
    ("C", ["bench", "--latent-size", "8x8", "--out", "b"], "accepted: --latent-size with --size"),
    ("C", ["bench", "--size", "wan1.3b", "--latent-size", "5x8", "--out", "b"], "multiple of 2"),
    ("C", ["bench", "--size", "wan1.3b", "--compile", "default", "--out", "b"], "needs a CUDA device"),
    ("C", ["bench", "--size", "wan1.3b", "--latent-size", "1024x1024", "--context", "1000", "--out", "b"], "GiB, but"),
    ("U", ["bench", "--size", "wan7b"], "choose from"),
    ("U", ["bench", "--size", "wan1.3b", "--latent-size", "60by104"], "accepted: two integers"),
    ("U", ["bench", "--dtype", "float16"], "choose from"),
    ("O", ["bench", "--size", "wan1.3b", "--out", "mine", "--force"], "not a bench directory written"),
    ("O", ["bench", "--baseline", "{base}", "--scd", "{scd}", "--out", "mine", "--force"], "not a bench directory written"),
    ("O", ["bench", "--baseline", "{base}", "--scd", "{scd}", "--out", "myrun"], "already exists"),
    ("U", ["intervene", "--refresh", "0"], "accepted: an integer in 1..1000"),
    ("U", ["intervene", "--seed", str(2**64)], "accepted: an integer in 0.."),
    ("U", ["intervene", "--clips", "0"], "accepted: an integer in 1..10000"),
    ("U", ["intervene", "--model", "{base}", *TINY, "--reuse", "9", "--out", "iv"], "layer 9 is out of range"),
    ("C", ["intervene", "--reuse", "none", "--refresh", "2", "--out", "iv"], "applies only to feature reuse"),
    ("C", ["intervene", "--model", "{scd}", *TINY, "--out", "iv"], "accepted: --knockout none"),
    ("C", ["intervene", "--model", "{base}", *TINY, "--reuse", "none", "--knockout", "none", "--skip", "none",
           "--diagonal", "none", "--out", "iv"], "nothing to measure"),
    ("U", ["intervene", "--model", "{base}", *TINY, "--skip", "3-1", "--out", "iv"], "accepted: A-B with 0 <= A <= B"),
    ("U", ["intervene", "--model", "{base}", *TINY, "--skip", "1-9", "--out", "iv"], "accepted: A-B with 0 <= A <= B"),
    ("U", ["intervene", "--model", "{base}", *TINY, "--skip", "middle", "--out", "iv"], "'default' or 'none'"),
    ("U", ["intervene", "--keep-steps", "0", "--out", "iv"], "accepted"),
    ("C", ["intervene", "--model", "{base}", *TINY, "--skip", "none", "--recompute-last", "2", "--out", "iv"],
     "applies to the span skip"),
    ("C", ["intervene", "--model", "{base}", *TINY, "--recompute-last", "45", "--out", "iv"], "leaves no skipped step"),
    ("U", ["intervene", "--model", "{base}", *TINY, "--knockout-layer", "9", "--out", "iv"], "layer 9 is out of range"),
    ("C", ["intervene", "--model", "{base}", *TINY, "--tuned-control", "{base}", "--out", "iv"], "which is not given"),
    ("U", ["intervene", "--model", "{base}", *TINY, "--diagonal", "7", "--out", "iv"], "layer 7 is out of range"),
    ("C", ["intervene", "--model", "{base}", *TINY, "--tuned", "{base}", "--out", "iv"], "with a frame-diagonal mask"),
    ("C", ["intervene", "--model", "{scd}", *TINY, "--knockout", "none", "--skip", "2-3", "--out", "iv"],
     "accepted: --skip none"),
    ("U", ["run", "--bands", "0"], "--bands: 0 is not accepted; accepted: an integer in 1..64 (the tokens of a frame)"),
    ("O", ["intervene", "--model", "{base}", *TINY, "--out", "mine", "--force"], "not an interventions directory"),
    ("K", ["intervene", "--model", "{bad:zero_heads}", *TINY, "--out", "iv"], "heads = 0"),
    # -- probe generate
    ("O", ["generate", "--model", "{base}", *TINY, "-o", "photo.png"], "already exists; pass --force"),
    ("O", ["generate", "--model", "{base}", *TINY, "-o", "photo.png", "--force"], "not a PNG strip written by"),
    ("O", ["generate", "--model", "{base}", *TINY, "-o", "strip.jpg"], "accepted: a path ending in .png"),
    ("O", ["generate", "--model", "{base}", *TINY, "-o", "/proc/x.png"], "cannot be written"),
    ("O", ["generate", "--model", "{base}", *TINY, "-o", "file.txt/x.png"], "is a file"),
    ("O", ["generate", "--model", "{base}", *TINY, "-o", LONG + ".png"], "File name too long"),
    ("O", ["generate", "--model", "{base}", *TINY, "-o", "dangling/x.png"], "dangling symbolic link"),
    ("U", ["generate", "--clip", "-3"], "accepted: an integer in 0..2147483647"),
    ("U", ["generate", "--seed", str(2**70)], "accepted: an integer in 0..9223372036854775807"),
    ("U", ["generate", "--frames", "nan"], "is not an integer"),
    ("C", ["generate", "--device", "cuda"], "cannot be used here; accepted"),
    ("K", ["generate", "--model", "{bad:nan}", *TINY, "-o", "x.png"], "NaN or infinite"),
    # -- probe train
    ("T", ["train", "baseline", "--out", "t", "--steps", "0"], "accepted: an integer in 1..100000000"),
    ("T", ["train", "baseline", "--out", "t", "--batch-size", "0"], "accepted: an integer in 1..4096"),
    ("T", ["train", "baseline", "--out", "t", "--checkpoint-every", "0"], "accepted: an integer in 1..100000000"),
    ("T", ["train", "baseline", "--out", "t", "--threads", "0"], "accepted: an integer in 1..1024"),
    ("T", ["train", "baseline", "--out", "t", "--lr", "nan"], "is not a finite number"),
    ("T", ["train", "baseline", "--out", "t", "--lr", "inf"], "is not a finite number"),
    ("T", ["train", "baseline", "--out", "t", "--lr=-1e-3"], "out of range; accepted"),
    ("T", ["train", "baseline", "--out", "t", "--lr", "0"], "out of range; accepted"),
    ("T", ["train", "baseline", "--out", "t", "--ema-decay", "1"], "out of range; accepted"),
    ("T", ["train", "baseline", "--out", "t", "--seed", str(2**40)], "accepted: an integer in 0..4294967295"),
    ("T", ["train", "baseline", "--out", "t", "--size", "huge"], "unknown baseline size 'huge'; accepted"),
    ("T", ["train", "baseline", "--out", "t", "--size", "../x"], "not a plain name"),
    ("T", ["train", "scd", "--out", "t", "--size", "wan1.3b"], "16-channel latents"),
    ("T", ["train", "wan", "--out", "t"], "choose from"),
    ("T", ["train", "baseline", "--out", "t", "--size", "tiny", "--batch-size", "4096", "--frames", "1024"], "GiB, but"),
    ("T", ["train", "baseline", "--out", "t", "--until", "0"], "accepted: an integer in 1..100000000"),
    ("T", ["train", "baseline", "--out", "mine"], "pass --resume"),
    ("T", ["train", "baseline", "--out", "mine", "--force"], "not a training directory written"),
    ("T", ["train", "baseline", "--out", "mine", "--resume"], "no training run to continue"),
    ("T", ["train", "baseline", "--out", "fake-train", "--force"], "not a training directory written"),
    ("T", ["train", "baseline", "--out", "myrun/t"], "lies inside"),
    ("O", ["convert", "{wan}", "fake-converted", "--heads", "2", "--force"], "not a converted model directory"),
    ("O", ["convert", "{wan}", "myrun", "--heads", "2", "--force"], "not a converted model directory"),
    ("O", ["convert", "{wan}", "myrun/x", "--heads", "2"], "lies inside"),
    ("T", ["train", "baseline", "--out", "{train}", "--resume", "--force"], "accepted: one of them"),
    ("T", ["train", "baseline", "--out", "/proc/t"], "cannot be written"),
    ("T", ["train", "baseline", "--out", "file.txt"], "already exists; pass --force"),
    # -- probe export
    ("N", ["export", "{train}", "--name", "../evil"], "not a plain name"),
    ("N", ["export", "{train}", "--name", "a/b"], "not a plain name"),
    ("N", ["export", "{train}", "--name", ""], "not a plain name"),
    ("N", ["export", "{train}", "--name", ".hidden"], "not a plain name"),
    ("N", ["export", "{train}", "--name", "x.safetensors"], "not a plain name"),
    ("N", ["export", "{train}", "--name", "/etc/passwd"], "not a plain name"),
    ("N", ["export", "{train}", "--name", "x" * 65], "not a plain name"),
    ("U", ["export", "{train}", "--name", "ok", "--clips", "0"], "accepted: an integer in 1..10000"),
    ("R", ["export", "mine", "--name", "ok"], "not a training directory"),
    ("C", ["export", "{train}", "--name", "ok", "--weights", "best"], "choose from"),
    ("O", ["export", "{train}", "--name", "baseline"], "already exists; pass --force"),
    # -- probe emergence, probe study
    ("R", ["emergence", "mine"], "is not a training directory"),
    ("R", ["emergence", "nowhere"], "is not a training directory"),
    ("R", ["emergence", "{train}"], "is not a run of the study plan"),
    ("U", ["emergence", "--clip", "-1"], "--clip"),
    ("U", ["emergence", "--snapshot-steps", "-1"], "--snapshot-steps"),
    ("O", ["emergence", "--out", "mine", "--force"], "not an emergence directory"),
    ("O", ["emergence", "--out", "myrun"], "already exists; pass --force"),
    ("O", ["emergence", "--out", "file.txt"], "already exists; pass --force"),
    ("C", ["emergence", "--out", "new"], "no cards to rebuild from"),
    ("C", ["study", "train", "--conditions", "moon", "--root", "new"], "accepted: comma-separated names"),
    ("C", ["study", "status", "--conditions", ",", "--root", "new"], "accepted: comma-separated names"),
    ("U", ["study", "train", "--seeds", "-1", "--root", "new"], "--seeds"),
    ("C", ["study", "fly"], "choose from"),
    ("T", ["run", "--model", "{base}", *TINY, "--layer", "1", "--scene", "moon"], "choose from"),
    ("T", ["train", "baseline", "--out", "t", "--scene", "moon"], "choose from"),
    ("T", ["train", "baseline", "--out", "t", "--steps", "10", "--bidirectional-steps", "11"], "more than steps"),
    ("T", ["train", "scd", "--out", "t", "--bidirectional-steps", "1"], "bidirectional_steps is a baseline setting"),
    ("T", ["train", "baseline", "--out", "t", "--snapshot-every", "-1"], "accepted: an integer in 0.."),
    # -- the doors added since the first table (issue 43), each class the issue names, user's look-alikes beside
    # every output (a lock-named file of the user's in mystudy/ and oldstudy/)
    # study: a user's file is never lost; an output inside another is refused; damaged state is one line
    ("O", ["study", "train", "--root", "mystudy", "--conditions", "reference", "--seeds", "0"],
     "in the way of the study's lock"),
    ("O", ["study", "train", "--root", "oldstudy", "--conditions", "reference", "--seeds", "0,1"],
     "in the way of the study's lock"),
    ("O", ["study", "train", "--root", "myrun/study", "--conditions", "reference", "--seeds", "0"], "lies inside"),
    ("O", ["study", "train", "--root", "file.txt", "--conditions", "reference", "--seeds", "0"], "is a file"),
    ("O", ["study", "status", "--root", "file.txt"], "is a file"),
    ("O", ["study", "train", "--root", "/proc/study"], "cannot be written"),  # a usage error, not the machine's
    ("O", ["study", "train", "--root", "file.txt/study"], "is a file, not a directory"),
    ("O", ["study", "train", "--root", ""], "is not a usable path"),
    ("O", ["study", "status", "--root", LONG * 2], "cannot be looked up"),
    ("R", ["study", "status", "--root", "{study:damaged}", "--conditions", "reference", "--seeds", "0"],
     "is not a readable training checkpoint"),
    ("U", ["study", "train", "--root", "new", "--seeds", "0,0"], "--seeds"),
    ("U", ["study", "train", "--root", "new", "--threads", "0"], "--threads"),
    ("R", ["study", "train", "--root", "new", "--skip-measured", "file.txt"], "is not a directory"),
    # convert --lora: damaged adapters are refused, never merged into weights
    ("K", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "{lora:overflow}"], "infinite or NaN weights"),
    ("K", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "{lora:inf}"], "is not a finite float matrix"),
    ("K", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "{lora:rank0}"], "with r >= 1"),
    ("K", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "{lora:nan_alpha}"], "lora_alpha"),
    ("K", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "{lora:text}"], "is not a readable safetensors file"),
    ("C", ["convert", "{wan}", "conv", "--heads", "2", "--lora-alpha", "2"], "--lora-alpha scales a LoRA"),
    ("U", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "{lora:overflow}", "--lora-alpha", "nan"],
     "is not a finite number"),
    ("R", ["convert", "{wan}", "conv", "--heads", "2", "--lora", "mine"], "is not a file"),
    ("O", ["convert", "{wan}", "myrun/conv", "--heads", "2", "--lora", "{lora:overflow}"], "lies inside"),
    # plan / intervene --plan: a damaged plan is refused where it is read
    ("R", ["intervene", "--plan", "{plan:nan_ratio}", "--out", "v"], "magcache 'mag_ratios'"),
    ("R", ["intervene", "--plan", "{plan:string_clip}", "--out", "v"], "calibration items are not"),
    ("R", ["intervene", "--plan", "{plan:no_calibration}", "--out", "v"], "'calibration' is missing"),
    ("R", ["intervene", "--plan", "{plan:wrong_checkpoint}", "--out", "v"], "'checkpoint' is not an object"),
    ("R", ["intervene", "--plan", "mine", "--out", "v"], "cannot be read as a plan"),
    ("O", ["plan", "{run}", "--out", "page.html"], "is not a .json file"),
    ("O", ["plan", "{run}", "--out", "myrun/p.json"], "lies inside"),
    # the sampling flags: the README's rules hold on them too
    ("U", ["run", "--timesteps", "1e3,500"], "no exponent"),
    ("U", ["run", "--timesteps", "1000,nan"], "accepted: comma-separated decimal numbers"),
    ("U", ["run", "--timesteps", "500,1000"], "strictly decreasing"),
    ("U", ["run", "--shift", "1e1"], "no exponent"),
    ("U", ["run", "--shift", "inf"], "'inf' is not a decimal number"),
    ("U", ["run", "--guidance-scale", "5e0"], "no exponent"),
    ("C", ["run", "--control-seed", "3", "--control", "none"], "--control-seed seeds the permuted-weights control"),
    ("U", ["run", "--window", "1e2"], "is not an integer"),
    ("C", ["run", "--rope", "cache", "--sink-frames", "1"], "need a window; accepted: a window (--window N)"),
    ("U", ["run", "--layers", "30"], "accepted: block indices in 0..29"),
    ("U", ["run", "--model", "scd", "--layer", "35"], "(encoder 0..24, decoder 25..34)"),
    # -- the command itself
    ("C", ["frobnicate"], "choose from"),
    ("C", ["run", "--nope"], "unrecognized arguments"),
    ("C", [], "required"),
]


def _argv(argv: list[str], paths: dict) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("{") and arg.endswith("}"):
            arg = str(paths[arg[1:-1]])
        out.append(arg)
    return out


def test_the_table_covers_every_class_for_every_command():
    assert len(CASES) >= 80
    commands = {argv[0] if argv else "" for _, argv, _ in CASES}
    assert {"run", "show", "report", "bench", "intervene", "generate", "train", "export", "emergence", "convert"} <= commands
    assert {kind for kind, _, _ in CASES} == set("ONUCKRT")


@pytest.mark.parametrize("kind, argv, expected", CASES, ids=[f"{k}-{' '.join(a)[:60]}" for k, a, _ in CASES])
def test_bad_cli_input_is_one_line_exit_2_and_changes_nothing(sandbox, material, capsys, kind, argv, expected):
    root, paths = material
    before, material_before = _tree(sandbox), _tree(root)
    checkpoints = Path(__file__).resolve().parents[2] / "scd" / "checkpoints"
    shipped_before = file_tree(checkpoints, contents=False)  # untouched: not one stat changes
    code = main(_argv(argv, paths))
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err, captured.out[-500:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert any(way in err for way in NAMES_THE_WAY) or "not a" in err or "cannot be written" in err, err
    assert _tree(sandbox) == before  # target, parent and siblings: byte-identical
    assert _tree(root) == material_before and file_tree(checkpoints, contents=False) == shipped_before


def test_force_replaces_only_what_the_toolkit_wrote(sandbox, material):
    """The other side of the table: --force does replace the toolkit's own run, and nothing else moves."""
    root, paths = material
    before = _tree(sandbox)
    assert main(["run", "--model", str(paths["base"]), *TINY, "--layer", "1", "--seed", "3", "--quiet", "--out", "myrun",
                 "--force"]) == 0
    after = _tree(sandbox)
    assert {k: v for k, v in after.items() if not k.startswith("myrun")} == \
        {k: v for k, v in before.items() if not k.startswith("myrun")}
    assert json.loads((sandbox / "myrun" / "manifest.json").read_text())["seed"] == 3
    assert np.load(sandbox / "myrun" / "video.npz")["generated"].shape[0] == 4


def test_commands_that_succeed_leave_the_user_s_look_alikes_as_they_were(sandbox, material, capsys):
    """`run` (new and --force), `show`, `report` and `train` beside a user's `.NAME.old` and `.NAME.PID.X.tmp`:
    the look-alikes are never renamed, restored or removed; `show` changes nothing at all."""
    root, paths = material
    look_alikes = lambda tree: {k: v for k, v in tree.items() if k.split("/")[0].startswith((".", "fake-"))}  # noqa: E731
    before = _tree(sandbox)
    assert main(["show", "myrun"]) == 0
    assert _tree(sandbox) == before
    assert main(["run", "--model", str(paths["base"]), *TINY, "--layer", "1", "--quiet", "--out", "new"]) == 0
    assert main(["run", "--model", str(paths["base"]), *TINY, "--layer", "1", "--quiet", "--out", "myrun", "--force"]) == 0
    assert main(["report", "myrun", "-o", "r.html"]) == 0
    assert main(["report", "myrun", "new", "-o", "page2.html"]) == 0
    assert main(["train", "baseline", "--size", "tiny", "--steps", "1", "--batch-size", "1", "--frames", "2", "--quiet",
                 "--out", "t"]) == 0
    capsys.readouterr()
    assert look_alikes(_tree(sandbox)) == look_alikes(before)
    assert sorted(p.name for p in sandbox.iterdir() if p.name.startswith(".")) == sorted(
        p.name for p in before_names(before))


def before_names(tree: dict) -> list[Path]:
    return [Path(k) for k in tree if "/" not in k and k.startswith(".")]
