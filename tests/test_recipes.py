"""The real-model recipes of docs/real-models.md, run as written but at a reduced size on diffusers' tiny configurations: a
non-square latent grid, 3-frame chunks, a prompt through the directory's umT5, guidance, a context video (a
folder of frames of another size, resized), the pipeline's scheduler; each ends in a report, and the manifest
says how the video was made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe_cli import main
from probes import load_run
from tests.scd.test_causal_wan import original_layout
from tests.wan_tiny import save_pipeline, tiny

UNIPC = {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "num_train_timesteps": 1000,
         "prediction_type": "flow_prediction", "use_flow_sigmas": True}
REDUCED = ["--latent-size", "8x12", "--steps", "3"]  # 4 x 6 tokens: rows and columns differ


def _frames(folder: Path, count: int = 5) -> Path:
    """A context video as a folder of PNGs, 40x56 pixels (the model's 16x24 after resizing)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _report(run: Path, tmp_path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / f"{run.name}-report.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    return out.read_text()


@pytest.mark.slow
def test_the_skyreels_recipe_runs_to_a_report(tmp_path):
    pipe = save_pipeline(tmp_path / "SkyReels-V2-DF", "skyreels", scheduler=UNIPC, inject_sample_info=True,
                         num_frame_per_block=3)
    out = tmp_path / "skyreels-df-layers-all"
    assert main(["run", "--model", f"diffusers:{pipe}", "--layers", "all", *REDUCED, "--frames-per-block", "3",
                 "--context", "3", "--frames", "3", "--prompt", "a red car drives along the coast road",
                 "--guidance-scale", "6", "--fps", "24", "--context-video", str(_frames(tmp_path / "clip")),
                 "--quiet", "--out", str(out)]) == 0
    run = load_run(out)
    m = run.manifest
    assert run.token_grid == (4, 6) and run.frames_per_block == 3
    g = m["generation"]
    assert g["context"]["source"] == "video" and g["context"]["path"].endswith("clip")
    assert g["prompt"] == "a red car drives along the coast road" and g["guidance_scale"] == 6.0
    assert g["negative_prompt"] is None and g["fps"] == 24 and g["frames_per_block"] == 3
    assert g["scheduler"]["class"] == "UniPCMultistepScheduler" and g["scheduler"]["shift"] == 3.0
    assert g["dtype"] == "float32" and g["device"] == "cpu"
    assert m["split"] == "context video"
    html = _report(out, tmp_path)
    for text in ("UniPCMultistepScheduler, shift 3.0", "a red car drives along the coast road", "3 frame(s) denoised",
                 "PCA of layer", "video "):
        assert text in html, text


@pytest.mark.slow
def test_the_self_forcing_recipe_converts_copies_and_runs_to_a_report(tmp_path):
    from safetensors.torch import save_file

    wan = save_pipeline(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", "wan", scheduler=UNIPC)
    save_file(original_layout(tiny("wan", seed=5).state_dict()), tmp_path / "self_forcing_dmd.safetensors")
    target = tmp_path / "self-forcing"
    assert main(["convert", str(tmp_path / "self_forcing_dmd.safetensors"), str(target / "transformer"),
                 "--heads", "2"]) == 0
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(wan / part, target / part)
    out = tmp_path / "self-forcing-layers-all"
    assert main(["run", "--model", f"diffusers:{target}", "--layers", "all", *REDUCED, "--frames-per-block", "3",
                 "--context", "3", "--frames", "6", "--scheduler", "pipeline", "--prompt", "a blue boat sails on sea",
                 "--guidance-scale", "6", "--context-video", str(_frames(tmp_path / "clip")), "--quiet",
                 "--out", str(out)]) == 0
    run = load_run(out)
    assert run.manifest["frames"] == [3, 4, 5, 6, 7, 8] and run.frames_per_block == 3
    assert json.loads((target / "transformer" / "convert.json").read_text())["generator"] == "scd-probes/converted"
    html = _report(out, tmp_path)
    assert "a blue boat sails on sea" in html and "UniPCMultistepScheduler" in html


def _recipe_commands() -> list[list[str]]:
    """The `probe convert` and `probe run` commands of docs/real-models.md's recipes ("As their authors run them"),
    continuation lines joined (the README links there)."""
    import re
    import shlex

    text = (Path(__file__).parents[1] / "docs" / "real-models.md").read_text()
    section = text.split("## As their authors run them", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in block.splitlines() if re.match(r"\s*probe (convert|run) ", line)]


def _reduced(argv: list[str], paths: dict[str, str]) -> list[str]:
    """A recipe command at test size: its paths mapped, 480p latents and GPU settings swapped for the tiny ones,
    every sampling flag kept as written."""
    out, skip = [], {"--device": 1, "--dtype": 1, "--latent-size": 1, "--clip": 1, "--layers": 1}
    i = 0
    while i < len(argv):
        if argv[i] in skip:
            i += 1 + skip[argv[i]]
            continue
        out.append(paths.get(argv[i], argv[i]))
        i += 1
    if out[0] == "run":
        out = [arg.replace(key, value) if arg.startswith("diffusers:") else arg for arg in out for key, value in
               [next(((k, v) for k, v in paths.items() if k in arg), ("", ""))]]
        out += ["--latent-size", "8x12", "--layers", "all", "--clip", "0-1", "--quiet"]
    return out


# The settings each author's inference runs with, transcribed from the upstream files docs/real-models.md cites (read
# with the search tool's copies of the repositories at these commits): what the recipes in docs/real-models.md must say.
UPSTREAM = {
    "self-forcing": {"source": "guandeh17/Self-Forcing @ 33593df", "ema": True, "context": 0, "frames": 21,
                     "frames_per_block": 3, "timesteps": [1000, 750, 500, 250], "warp": True, "shift": 5.0,
                     "sampler": "renoise", "window": None, "sink_frames": 0, "lora_alpha": None},
    "causvid": {"source": "tianweiy/CausVid @ ca21150", "ema": None, "context": 0, "frames": 21,  # ema: it keeps none
                "frames_per_block": 3, "timesteps": [1000, 757, 522], "warp": False, "shift": None,
                "sampler": "renoise", "window": None, "sink_frames": 0, "lora_alpha": None},
    "longlive": {"source": "NVlabs/LongLive @ 2462895", "ema": False, "context": 0, "frames": 120,
                 "frames_per_block": 3, "timesteps": [1000, 750, 500, 250], "warp": True, "shift": 5.0,
                 "sampler": "renoise", "window": 12, "sink_frames": 3, "lora_alpha": 256.0},
}


def _recipe(commands: list[list[str]], name: str) -> dict:
    """What the recipes' convert and run commands for `name` say, in UPSTREAM's terms."""
    from probe_cli.cli import build_parser

    parser = build_parser()
    convert = next(parser.parse_args(c) for c in commands if c[0] == "convert" and f"/models/{name}/" in c[2])
    run = next(parser.parse_args(c) for c in commands if c[0] == "run" and c[c.index("--model") + 1] ==
               f"diffusers:/models/{name}")
    return {"ema": convert.ema, "context": run.context, "frames": run.frames, "frames_per_block": run.frames_per_block,
            "timesteps": run.timesteps, "warp": run.warp, "shift": run.shift, "sampler": run.sampler,
            "window": run.window, "sink_frames": run.sink_frames, "lora_alpha": convert.lora_alpha}


def test_each_recipe_runs_its_model_as_the_upstream_inference_does():
    commands = _recipe_commands()
    docs = (Path(__file__).parents[1] / "docs" / "real-models.md").read_text()
    for name, upstream in UPSTREAM.items():
        assert upstream["source"] in docs, name  # the docs cite the files these values were read from
        said = _recipe(commands, name)
        assert said == {k: v for k, v in upstream.items() if k != "source"}, (name, said)


def test_the_recipe_commands_parse():
    """Every `probe` command of the recipes parses with the real parser."""
    from probe_cli.cli import build_parser

    commands = _recipe_commands()
    assert {c[0] for c in commands} == {"convert", "run"} and len(commands) >= 6
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)
    sampling = [c for c in commands if "--sampler" in c]
    assert sampling and all(c[c.index("--timesteps") + 1] in ("1000,750,500,250", "1000,757,522") for c in sampling)
    assert any("--window" in c and c[c.index("--window") + 1] == "12" and c[c.index("--sink-frames") + 1] == "3"
               for c in commands)


@pytest.mark.slow
def test_the_self_forcing_causvid_and_longlive_recipes_run_as_written_at_a_reduced_size(tmp_path):
    """Self-Forcing (4 warped steps, re-noising, 3-frame chunks), CausVid (its 3 unwarped steps) and LongLive (base +
    LoRA merged, a 12-frame window with 3 sinks), all from no context, the docs' commands with their paths mapped
    to tiny pipelines and fewer frames, each to a report."""
    import torch

    from tests.scd.test_convert_checks import _adapter

    wan = save_pipeline(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", "wan", scheduler=UNIPC)
    original = original_layout(tiny("wan", seed=5).state_dict())
    torch.save({"generator_ema": original, "generator": original}, tmp_path / "self_forcing_dmd.pt")
    torch.save({"generator_ema": original, "generator": original}, tmp_path / "longlive_base.pt")
    torch.save({"generator": original}, tmp_path / "causvid_model.pt")
    torch.save({"generator_lora": _adapter(original, 4)}, tmp_path / "lora.pt")
    paths = {"self_forcing_dmd.pt": str(tmp_path / "self_forcing_dmd.pt"),
             "causvid_model.pt": str(tmp_path / "causvid_model.pt"),
             "/models/causvid/transformer": str(tmp_path / "causvid" / "transformer"),
             "/models/causvid": str(tmp_path / "causvid"), "reports/runs/causvid-3step": str(tmp_path / "cv"),
             "longlive_base.pt": str(tmp_path / "longlive_base.pt"), "lora.pt": str(tmp_path / "lora.pt"),
             "/models/self-forcing/transformer": str(tmp_path / "self-forcing" / "transformer"),
             "/models/longlive/transformer": str(tmp_path / "longlive" / "transformer"),
             "/models/self-forcing": str(tmp_path / "self-forcing"), "/models/longlive": str(tmp_path / "longlive"),
             "reports/runs/self-forcing-4step": str(tmp_path / "sf"), "reports/runs/longlive-w12s3": str(tmp_path / "ll")}
    for argv in _recipe_commands():
        if any(model in " ".join(argv) for model in ("krea", "14b")):
            continue  # no 14B on this machine: its shapes and memory estimate are tested apart
        argv = _reduced(argv, paths)
        if argv[0] == "convert":
            argv += ["--heads", "2"]
        else:
            argv[argv.index("--frames") + 1] = "12" if "--window" in argv else "6"
            argv[argv.index("--prompt") + 1] = "a red car"
        assert main(argv) == 0, argv
        if argv[0] == "convert":
            target = Path(argv[2]).parent
            for part in ("vae", "text_encoder", "tokenizer"):
                shutil.copytree(wan / part, target / part)
    sf, cv, ll = load_run(tmp_path / "sf"), load_run(tmp_path / "cv"), load_run(tmp_path / "ll")
    assert sf.manifest["sampling"]["timesteps"] == [1000.0, 937.5, 833.3333333333334, 625.0]
    assert sf.manifest["sampling"]["sampler"] == "renoise" and len(sf.steps) == 4 and sf.frames_per_block == 3
    assert cv.manifest["sampling"]["timesteps"] == [1000.0, 757.0, 522.0] and len(cv.steps) == 3
    for run in (sf, cv, ll):  # text-to-video: the first chunk from the prompt alone, and the report says so
        assert run.manifest["context"] == 0 and run.frames[0] == 0
        assert run.items[0].manifest["generation"]["context"] == {"source": "none", "latent_frames": 0}
    for name in ("sf", "cv"):
        html = _report(tmp_path / name, tmp_path)
        assert "none: the first chunk generated from the prompt alone" in html and "none: the explicit timestep list" in html
    assert ll.manifest["sampling"]["window"] == 12 and ll.manifest["sampling"]["sink_frames"] == 3
    regions = ll.attention_regions(0)
    assert regions.shape[-1] == 4 and torch.allclose(regions.sum(-1), torch.ones(()), atol=1e-5)
    html = _report(tmp_path / "ll", tmp_path)
    assert "rolling window of 12 frames, 3 sink frame(s)" in html and "layer x distance" in html
