"""Where a built-in checkpoint's files are and what its config says, read without torch: the command checks a
layer against the model's depth, and a name against the shipped ones, before importing it (`scd.zoo` loads the
weights). A checkpoint is a `.safetensors` file and a JSON config beside it (`{stem}.json`, or `config.json` next to
`model.safetensors` in a directory)."""

from __future__ import annotations

import json
from pathlib import Path

from scd.errors import CheckpointError
from scd.files import PLAIN_NAME, input_path, is_plain_name

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
WEIGHTS = ("ema", "raw")  # the weights a training run holds: its EMA and its raw weights


def shipped_models() -> list[str]:
    """Names of the checkpoints shipped in scd/checkpoints/."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.safetensors") if p.with_suffix(".json").exists())


def config_path_for(weights: Path) -> Path:
    """The JSON config beside a weights file: `config.json` for `model.safetensors`, else `{stem}.json`."""
    return weights.parent / "config.json" if weights.name == "model.safetensors" else weights.with_suffix(".json")


def resolve(name_or_path: str | Path) -> tuple[Path, Path]:
    """(weights, config) paths of a shipped name, a checkpoint directory or a .safetensors file."""
    if isinstance(name_or_path, str) and name_or_path in shipped_models():
        return CHECKPOINT_DIR / f"{name_or_path}.safetensors", CHECKPOINT_DIR / f"{name_or_path}.json"
    path = input_path(name_or_path, "model", f"{', '.join(shipped_models()) or '(none shipped)'}, a checkpoint "
                      "directory, or a .safetensors file with a .json config beside it", CheckpointError)
    if path.is_dir():
        weights, config = path / "model.safetensors", path / "config.json"
    elif path.suffix == ".safetensors":
        weights, config = path, config_path_for(path)
    else:
        raise CheckpointError(
            f"unknown model {str(name_or_path)!r}; accepted: {', '.join(shipped_models()) or '(none shipped)'}, "
            "a checkpoint directory, or a .safetensors file with a .json config beside it")
    for p in (weights, config):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file missing: {p}; accepted: a .safetensors file with its .json "
                                  "config beside it (model.safetensors + config.json in a directory)")
    return weights, config


def read_config(config_path: Path) -> dict:
    """A checkpoint's JSON config as a dict (family, size fields, and the weights' sha256 and dtype); CheckpointError
    if it is not a JSON object. Its fields are checked where the model is built (`scd.zoo.validate_config`)."""
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else e
        raise CheckpointError(f"config {config_path} is not valid JSON ({reason})") from None
    except OSError as e:
        raise CheckpointError(f"config {config_path} cannot be read ({e.strerror})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"config {config_path} must be a JSON object")
    return config


def export_targets(name: str, directory: Path = CHECKPOINT_DIR) -> list[Path]:
    """The weights, config, card and per-clip validation table (the card's numbers, clip by clip: a test reproduces
    some clips of it without rerunning all) an export of `name` writes into `directory`, weights first."""
    return [directory / f"{name}{ext}" for ext in (".safetensors", ".json", ".md", ".validation.csv")]


def check_export(run: str | Path, name: str, weights: str, force: bool, directory: Path = CHECKPOINT_DIR) -> Path:
    """The training directory `run` as a Path, once it and the export's other arguments are accepted: a directory
    written by probe train, `weights` of WEIGHTS or "auto", a plain checkpoint `name`, and no checkpoint of that name
    in `directory` unless `force`, which replaces only one this toolkit wrote (CheckpointError, one line, otherwise).
    No torch: the command refuses before importing it."""
    run = input_path(run, "run", "a training directory written by probe train", CheckpointError)
    if weights not in (*WEIGHTS, "auto"):
        raise CheckpointError(f"unknown weights {weights!r}; accepted: auto, {', '.join(WEIGHTS)}")
    if not is_plain_name(name):
        raise CheckpointError(f"checkpoint name {name!r} is not a plain name; accepted: {PLAIN_NAME}")
    if not (run / "train.json").is_file() or not (run / "train_state.safetensors").is_file():
        raise CheckpointError(f"{run} is not a training directory written by probe train (no train.json and "
                              "train_state.safetensors)")
    targets = export_targets(name, directory)
    if any(p.exists() for p in targets):
        if not force:
            raise CheckpointError(f"{directory / name}.safetensors already exists; pass --force to replace it")
        try:
            ours = isinstance(json.loads(targets[1].read_text()).get("family"), str)
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours or any(p.is_symlink() or (p.exists() and not p.is_file()) for p in targets):
            raise CheckpointError(f"{directory / name}.* is not a checkpoint written by this toolkit; "
                                  "--force replaces only the toolkit's own checkpoints")
    return run
