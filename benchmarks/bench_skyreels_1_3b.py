"""The real SkyReels-V2-DF-1.3B configuration with random weights (never downloaded), probed with every layer.

    python benchmarks/bench_skyreels_1_3b.py build DIR                 # write DIR/transformer (bfloat16 safetensors)
    python benchmarks/bench_skyreels_1_3b.py time DIR [--latent-size 16x16] [--device cpu] [--dtype float32] ...

`build` writes the configuration diffusers' SkyReels-V2-DF-1.3B-540P conversion has (Wan 2.1 1.3B: 30 blocks,
12 heads x 128, FFN 8960, umT5 text 4096 wide, `inject_sample_info`), seeded random weights. `time` runs
`probe run --layers all` on it in this process and prints its wall time (loading, hashing the weights, the context
pass, every denoising pass, the cache writes, saving the run), per probed frame and per denoising pass of a chunk,
the time a load alone takes, and the peak memory (resident set on the CPU, allocated memory on CUDA), as
RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

CONFIG = {  # diffusers' SkyReelsV2Transformer3DModel, as the DF-1.3B conversion configures it
    "patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024, "pos_embed_seq_len": None, "inject_sample_info": True, "num_frame_per_block": 1,
}


def build(directory: Path, seed: int = 0) -> None:
    import torch
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    model = SkyReelsV2Transformer3DModel(**CONFIG).to(torch.bfloat16)
    model.save_pretrained(directory / "transformer", safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {directory / 'transformer'}: {params / 1e9:.3f} B parameters, bfloat16, seed {seed}")


def time_probe(directory: Path, argv: list[str]) -> None:
    import torch

    from probe_cli import main

    out = directory / "run"
    args = ["run", "--model", f"diffusers:{directory}", "--layers", "all", "--force", "--quiet", "--out", str(out), *argv]
    cuda = "cuda" in " ".join(argv)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    from scd import load_model

    load_model(f"diffusers:{directory}", latent_size=(8, 8))  # the load alone, for scale (the run loads again)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    if main(args) != 0:
        sys.exit(2)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    frames, steps = len(manifest["frames"]), len(manifest["steps"])
    chunks = frames // manifest["config"]["frames_per_block"]  # a chunk's frames are denoised in one pass per step
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"command": "probe " + " ".join(args), "machine": f"{platform.machine()}, "
                      f"{torch.get_num_threads()} threads, torch {torch.__version__}"
                      + (f", {torch.cuda.get_device_name()}" if cuda else ""),
                      "wall_s": round(wall, 1), "probed_frames": frames, "steps": steps,
                      "s_per_probed_frame": round(wall / frames, 1),
                      "s_per_denoising_pass": round(wall / (chunks * steps), 2), "load_s": round(loaded, 1),
                      "peak_GiB": round(peak, 2), "peak_is": "CUDA allocated" if cuda else "resident set (ru_maxrss)"},
                     indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("build", "time"))
    parser.add_argument("directory", type=Path)
    known, rest = parser.parse_known_args()
    build(known.directory) if known.what == "build" else time_probe(known.directory, rest)
