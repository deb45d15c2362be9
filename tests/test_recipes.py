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
    assert main(["report", str(run), "-o", str(tmp_path / "report.html")]) == 0
    return (tmp_path / "report.html").read_text()


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
