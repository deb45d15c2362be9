"""`probe run`, `probe show`, `probe report`: probe a model while it generates, and read what was recorded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from probe_cli.checks import UsageError, estimate_fits, indices, output, placement, size_latent

if TYPE_CHECKING:
    from probes.recording import Recording


def _default_out(model: str, spec: list[int] | str, control: str = "none") -> Path:
    """reports/runs/MODEL-layer-15, MODEL-layers-0-5-15 or MODEL-layers-all (MODEL-permuted-... for a control)."""
    name = Path(model.removeprefix("diffusers:").rstrip("/")).name.removesuffix(".safetensors") or "model"
    name += "" if control == "none" else f"-{control}"
    which = "layers-all" if spec == "all" else ("layer-" if len(spec) == 1 else "layers-") + "-".join(map(str, spec))
    return Path("reports") / "runs" / f"{name}-{which}"


def summary_table(run: Recording) -> str:
    """One row per layer of a run: mean off-diagonal cross-step cosine, its minimum, attention share on
    earlier frames ("-" for the cosine of SCD encoder layers, which run once per frame)."""
    import pandas as pd

    metrics, capture = run.metrics, run.manifest.get("capture", [])
    by = metrics.groupby(["layer", "metric"]).value
    means, mins = by.mean().unstack(), by.min().unstack()
    table = pd.DataFrame(index=sorted(metrics.layer.unique()))
    table.index.name = "layer"
    roles = [run.role(layer) for layer in table.index]
    if set(roles) != {"causal"}:
        table["block"] = roles
    if "features" in capture:
        table["cross-step cosine (mean)"] = means.get("token_cosine_mean")
        table["cross-step cosine (min)"] = mins.get("token_cosine_min")
    if "attention" in capture:
        table["attention on earlier frames"] = means.get("attention_earlier")
        table["per-key ratio, earlier / own"] = _per_key_ratio(metrics, run)
    if "clip" in metrics:  # a merged sweep: the spread of each item's mean over the items
        spread = metrics.groupby(["layer", "metric", "clip", "seed"]).value.mean().groupby(["layer", "metric"]).std()
        spread = spread.unstack()
        for name, metric in (("cross-step cosine (mean)", "token_cosine_mean"), ("attention on earlier frames",
                                                                                 "attention_earlier")):
            if name in table and metric in spread:
                table[f"{name}, std over {len(run.manifest['sweep']['items'])} runs"] = spread[metric]
    shown = table.map(lambda v: "-" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else v)
    return shown.to_markdown(colalign=("right",) * (len(shown.columns) + 1), disable_numparse=True)  # "-": SCD encoder


def _per_key_ratio(metrics, run: Recording):
    """Per layer: mean attention on one earlier-frame key the queries see / on one own-frame key
    (`analyses.sparsity.per_key_ratio`, under the run's cache policy), over the run's frames, steps, heads and items."""
    import pandas as pd

    from analyses.sparsity import per_key_ratio

    layers = sorted(int(layer) for layer in metrics.layer.unique())
    return pd.Series([float(per_key_ratio(run.attention(layer), run.frames, run.role(layer),
                                          frames_per_block=run.frames_per_block, policy=run.cache_policy))
                      for layer in layers], index=layers)


def _capture(text: str) -> list[str]:
    """'features,attention' -> the kinds named (checked with the other probe options by `probes.spec.ProbeSpec`)."""
    return [c.strip() for c in text.split(",")]


def _text_embeddings(path: str | None):
    """The tensor of a .safetensors file ("text_embeddings", or its only tensor): a diffusers model's prompt."""
    if path is None:
        return None
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"--text-embeddings {path} cannot be read ({reason}); accepted: a .safetensors file") from None
    if "text_embeddings" in tensors:
        tensor = tensors["text_embeddings"]
    elif len(tensors) == 1:
        tensor = next(iter(tensors.values()))
    else:
        raise UsageError(f"--text-embeddings {path} holds {sorted(tensors)}; accepted: one tensor, or one named text_embeddings")
    if not tensor.is_floating_point() or not torch.isfinite(tensor).all() or tensor.dim() not in (2, 3):
        raise UsageError(f"--text-embeddings {path}: the tensor is {tensor.dtype} {list(tensor.shape)}; accepted: finite "
                         "floats [tokens, text_dim]")
    return tensor


def _uncond(path: Path) -> Path:
    """Where `--guidance-pass both` writes the unconditional pass of the run at `path`."""
    return path.with_name(path.name + ".uncond")


def _condition(model, args: argparse.Namespace) -> None:
    """A diffusers model's prompt and guidance set (its frame counts were checked against its config's chunk and RoPE
    table before loading: `_check_record_flags`)."""
    assert model.frames_per_block == args.record.sampling.frames_per_block  # the loader computes the chunk alike
    from scd.wan.pipeline import encode_prompt

    text = encode_prompt(model, args.prompt) if args.prompt is not None else model.text_embeddings
    negative = None
    if args.guidance_scale not in (None, 1.0) and (args.prompt is not None or args.negative_prompt is not None):
        negative = encode_prompt(model, args.negative_prompt or "")  # Wan's pipelines: the empty prompt by default
    model.set_prompt(text, negative, 1.0 if args.guidance_scale is None else args.guidance_scale)


# How probe run's refusals name each value: its flags.
RUN_FLAGS = {"steps": "--steps", "timesteps": "--timesteps", "warp": "--warp", "shift": "--shift",
             "sampler": "--sampler", "cache_policy": "--window / --sink-frames", "seed": "--seed",
             "context_frames": "--context", "frames": "--frames", "clips": "--clip", "draws": "--seeds",
             "noise": "--seed", "clip_frames": "--clip-frames", "scene": "--scene", "context_source": "--context-video"}


def _check_record_flags(args: argparse.Namespace, *, frames_per_block: int, max_frames: int | None,
                        from_nothing: bool) -> None:
    """What probe run generates, checked once (`probes.spec.RecordSpec`, the sampling in it) for a model of these
    facts, before any work; sets `args.record`, and `args.steps` and `args.cache_policy` from it."""
    from probes.spec import RecordSpec
    from probes.sweep_plan import noise_seed
    from scd.contract import CachePolicy

    clips = indices(args.clip, "--clip")  # parsed; RecordSpec checks them
    video = args.context_video is not None  # a tensor context: the clip only names the run
    args.record = RecordSpec.check(
        clips=None if video else clips, draws=args.seeds, seed=args.seed,
        noise=noise_seed(args.seed, clips[0]) if video else None, context_frames=args.context, frames=args.frames,
        clip_frames=args.clip_frames, scene=args.scene,
        context_source="latent noise" if args.model.startswith("diffusers:") or args.size else "benchmark",
        frames_per_block=frames_per_block, max_frames=max_frames, from_nothing=from_nothing, names=RUN_FLAGS,
        steps=args.steps, timesteps=args.timesteps, warp=args.warp, shift=args.shift, sampler=args.sampler,
        cache_policy=CachePolicy(args.window, args.sink_frames, args.rope))
    args.clips = list(args.record.clips) or clips
    args.steps, args.cache_policy = args.record.sampling.steps, args.record.sampling.cache_policy


def _check_run_flags(args: argparse.Namespace, diffusers_model: bool) -> list[str]:
    """Everything about `probe run`'s flags that needs no model: refused before anything is loaded."""
    capture = _capture(args.capture)
    if args.control_seed is not None and args.control == "none":
        raise UsageError("--control-seed seeds the permuted-weights control; accepted: --control permuted with it, or no "
                         "--control-seed")
    args.control_seed = 0 if args.control_seed is None else args.control_seed
    only_diffusers = (("--latent-size", args.latent_size), ("--text-embeddings", args.text_embeddings),
                      ("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt),
                      ("--guidance-scale", args.guidance_scale), ("--frames-per-block", args.frames_per_block),
                      ("--fps", args.fps), ("--context-video", args.context_video),
                      ("--scheduler", None if args.scheduler == "auto" else args.scheduler),
                      ("--guidance-pass", None if args.guidance_pass == "cond" else args.guidance_pass))
    if args.size is not None:
        only_diffusers = only_diffusers[1:]  # --latent-size sets the random model's frame too
    if not diffusers_model:
        for flag, value in only_diffusers:
            if value is not None:
                raise UsageError(f"{flag} applies only to diffusers models, not {args.model!r}; accepted: --model diffusers:DIR "
                                 f"with {flag}, or no {flag}")
    if (diffusers_model or args.size) and args.scene != "sprites":
        raise UsageError(f"--scene picks the benchmark clips of a built-in model; {args.model!r} is given its context "
                         "as latents; accepted: no --scene for diffusers models")
    if args.prompt is not None and args.text_embeddings is not None:
        raise UsageError("--prompt and --text-embeddings both give the prompt; accepted: one of them")
    guided = args.guidance_scale not in (None, 1.0)
    if args.negative_prompt is not None and not guided:
        raise UsageError("--negative-prompt is read by classifier-free guidance only; accepted: with --guidance-scale "
                         "other than 1")
    if args.guidance_pass != "cond" and not guided:
        raise UsageError(f"--guidance-pass {args.guidance_pass} needs classifier-free guidance; accepted: with "
                         "--guidance-scale other than 1, or --guidance-pass cond")
    if args.context == 0 and args.context_video is not None:
        raise UsageError("--context-video gives context frames, --context 0 none; accepted: --context >= 1 with "
                         "--context-video, or --context 0 without it")
    if args.context_video is not None and not Path(args.context_video).exists():
        raise UsageError(f"--context-video {args.context_video} does not exist; accepted: a video file or a folder of "
                         "frames")
    if not diffusers_model:  # the built-in families denoise one frame at a time, from context, at any position
        _check_record_flags(args, frames_per_block=1, max_frames=None, from_nothing=False)
    return capture


def model_shape(model, layout) -> dict:
    """What the memory estimate needs of a loaded model: width, depth, heads, tokens per frame, frame pixels."""
    config = model.get_config()
    channels, height, width = model.frame_shape
    return {"width": config["width"], "depth": layout.depth, "heads": config["heads"],
            "tokens": layout.tokens_per_frame, "frame_pixels": 3 * height * width, "weights": 0}


def diffusers_shape(model: str, args: argparse.Namespace) -> dict:
    """The same, for `diffusers:DIR`, from its config.json and the safetensors headers, before anything is loaded:
    the real width (heads x head dim), layers, tokens of the latent grid, and the bytes of the weights (with the
    text encoder's when a prompt is encoded)."""
    from scd.errors import CheckpointError
    from scd.files import input_path
    from scd.wan.causal_wan import geometry
    from scd.wan.checks import check_pipeline, check_weights, read_transformer_config, stored_numel

    root = input_path(model.removeprefix("diffusers:"), "--model diffusers:", "a pipeline directory (transformer/...) "
                      "or a transformer directory", CheckpointError)
    directory = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a diffusers model directory: no config.json; accepted: a pipeline "
                              "directory (transformer/...) or a transformer directory")
    if directory != root:
        check_pipeline(root)
    config = read_transformer_config(directory)
    numel = check_weights(directory, config)
    h, w = args.latent_size or (8, 8)
    grid, chunk, _ = geometry(config, (h, w), args.frames_per_block, args.fps)
    table = config.get("rope_max_seq_len", 1024)  # frame positions: the frame counts are checked against it
    heads, head_dim = config.get("num_attention_heads", 40), config.get("attention_head_dim", 128)
    prompt = args.prompt is not None or args.negative_prompt is not None  # umT5 is loaded, in float32, to encode it
    return {"width": heads * head_dim, "depth": config.get("num_layers", 40), "heads": heads, "chunk": chunk,
            "max_frames": table,
            "tokens": grid[0] * grid[1], "frame_pixels": 3 * 64 * h * w, "weights": 4 * numel,
            "text_encoder": 4 * stored_numel(root / "text_encoder") if prompt else 0}


# Peak host memory per byte of the float32 features recorded, measured: the shipped baseline, `probe run --capture
# features --mode full --frames 8 --steps 50` at 1, 15 and 30 layers (max RSS 0.71, 1.50, 2.37 GB on 2 CPU cores):
# 57-59 MB per further layer for 13.1 MB of float32 features, 4.4-4.5x (the steps' copies, the stacks, the float16
# copy, the file's bytes being written). It was taken as 2x, which let --mode auto keep a run in full mode that needs
# more than twice its limit.
FEATURE_PEAK_FACTOR = 4.5


def feature_bytes(shape: dict, layers: int, frames: int, steps: int, mode: str, kept: int = 256) -> int:
    """Peak host memory of recording the features (FEATURE_PEAK_FACTOR x their float32 bytes; stream mode: `kept`
    tokens of each frame)."""
    kept = shape["tokens"] if mode == "full" else min(kept, shape["tokens"])
    return int(FEATURE_PEAK_FACTOR * layers * frames * steps * (kept * shape["width"] * 4 + 16 * steps))


def resolve_mode(mode: str, shape: dict, layers: int, frames: int, steps: int, capture: list[str]) -> tuple[str, int]:
    """(mode, tokens kept per frame and step in stream mode). `--mode auto`: full unless the recorded features would
    exceed FULL_MODE_LIMIT_GIB; then stream, keeping the most tokens (a power of 2, at most 256, at least 1) that
    stay under it, so host memory is bounded at any scale (the step x step similarities use every token either
    way: they are reduced as the steps arrive)."""
    from probe_cli.checks import FULL_MODE_LIMIT_GIB

    limit = FULL_MODE_LIMIT_GIB * 2**30
    if mode != "auto" or "features" not in capture:
        return ("full" if mode == "auto" else mode), 256
    if feature_bytes(shape, layers, frames, steps, "full") <= limit:
        return "full", 256
    kept = 256
    while kept > 1 and feature_bytes(shape, layers, frames, steps, "stream", kept) > limit:
        kept //= 2
    return "stream", kept


def _estimate(shape: dict, spec, args: argparse.Namespace, clip_frames: int) -> int:
    """Bytes a probed generation holds: the weights, the model's KV cache and scores (scd.memory; two caches with
    guidance), the clip, and the recorded features and attention (`spec`: the probe's ProbeSpec)."""
    layers, capture = len(spec.layers), spec.capture
    from scd.memory import generation_bytes

    itemsize = 2 if args.dtype != "float32" else 4
    caches = 2 if args.guidance_scale not in (None, 1.0) else 1
    total = shape["weights"] * itemsize // 4 + shape.get("text_encoder", 0)  # umT5 runs in float32 on the CPU
    cached = clip_frames if args.window is None else min(args.window, clip_frames)  # a rolling cache holds its window
    total += caches * generation_bytes(shape["width"], shape["depth"], shape["heads"], shape["tokens"], cached,
                                       itemsize=itemsize)
    total += clip_frames * shape["frame_pixels"] * 8
    if "features" in capture:
        total += feature_bytes(shape, layers, args.frames, args.steps, spec.mode, spec.pca_tokens)
    if "attention" in capture:
        # float32 per (layer, frame, step, head): the mass over the clip's frames [T] and the pooled map [g, T * g]
        total += layers * args.frames * args.steps * shape["heads"] * clip_frames * 4 * (1 + spec.bands ** 2)
    return total


def _probe_spec(args: argparse.Namespace, facts, capture: list[str], sharded: bool):
    """(ProbeSpec, output) of a run, checked once, before any work: every probe option against the model's facts
    (`probes.spec.ProbeSpec.check`: refusals name the flags), and the output (the default path names the layers).
    `--mode auto` is checked as full; `_fit` resolves it."""
    from probes.spec import ProbeSpec

    flag = "--layers" if args.layers is not None else "--layer"
    text = args.layers if args.layers is not None else args.layer
    chosen = "all" if text.strip() == "all" else [int(part) for part in text.split(",")]  # syntax: layers_syntax
    names = {"layers": flag, "capture": "--capture", "hook": "--hook", "mode": "--mode", "backend": "--backend",
             "pca_tokens": "pca_tokens", "sample_seed": "sample_seed", "bands": "--bands",
             "guidance_pass": "--guidance-pass", "frames": "frames", "steps": "steps"}
    spec = ProbeSpec.check(facts, chosen, capture=capture, hook=args.hook, mode="full" if args.mode == "auto" else
                           args.mode, backend=args.backend, bands=args.bands,
                           guidance_pass="uncond" if args.guidance_pass == "both" else args.guidance_pass, names=names)
    if args.out is not None:  # checked before the model was loaded (_check_out)
        return spec, args.checked_out
    _check_out(args, _default_out(args.model, "all" if chosen == "all" else list(spec.layers), args.control), sharded)
    return spec, args.checked_out


def _check_out(args: argparse.Namespace, path: Path, sharded: bool) -> None:
    """The run's output (and OUT.uncond with --guidance-pass both), checked once: `args.checked_out` (and
    `args.uncond_out`) are `scd.files.CheckedOutput`s, which the writers trust."""
    args.checked_out = output(path, "sweep" if sharded else "run", args.force)
    args.uncond_out = output(_uncond(path), "run", args.force) if args.guidance_pass == "both" else None


def _fit(args: argparse.Namespace, shape: dict, spec):
    """The spec with its recording mode resolved (`--mode auto`), once the memory the run needs is checked against
    the model's `shape`, before any work."""
    from dataclasses import replace

    count, capture = len(spec.layers), list(spec.capture)
    mode, pca_tokens = resolve_mode(args.mode, shape, count, args.frames, args.steps, capture)
    spec = replace(spec, mode=mode, pca_tokens=pca_tokens)
    estimate_fits(_estimate(shape, spec, args, args.record.clip_frames), "this probed generation (weights, KV cache, recorded "
                  "features)")
    return spec  # resolve_mode gives a mode and token count in range


def _random_baseline(args: argparse.Namespace, where):
    """The baseline at `--size` with seeded random weights (`scd.zoo.random_model`), at `--latent-size` if given."""
    from scd.zoo import random_model

    height, width = size_latent(args.size, args.latent_size)
    return random_model("baseline", args.size, where, frame_size=height, frame_width=width)


def cmd_run(args: argparse.Namespace) -> None:
    if args.size is not None and args.model is not None:
        raise UsageError(f"--size builds a model with random weights, --model {args.model!r} loads one; accepted: one "
                         "of them")
    args.model = args.model or (f"random:{args.size}" if args.size else "baseline")
    diffusers_model = args.model.startswith("diffusers:")
    capture = _check_run_flags(args, diffusers_model)  # and, for the built-in families, what is generated
    from probes.spec import ModelFacts  # torch-free, as the sweep's seeds
    from probes.sweep_plan import world

    if args.control != "none" and args.model.startswith("random:"):
        raise UsageError("--control permuted permutes a trained model's weights; --size already gives random weights; "
                         "accepted: --control with --model")
    if args.control == "rescaled" and diffusers_model:
        raise UsageError("--control rescaled rescales the built-in blocks' adaLN gates; accepted: --control permuted for "
                         "a diffusers model")
    rank, world_size, local_rank = world()
    facts = spec = out = None  # the model's facts, before its weights load where they can be read
    if not diffusers_model and args.size is None:
        from scd.checkpoint_files import read_config, resolve, shipped_models
        from scd.contract import builtin_roles

        _, config = resolve(args.model)  # an unknown name, a missing file: refused here
        if args.model in shipped_models():  # its depth is in its config, sound (tests/scd/test_shipped): read before
            fields = read_config(config)  # torch; a user's config is judged whole by the loader first
            facts = ModelFacts.of_builtin(fields, builtin_roles(fields))
    embeddings = _text_embeddings(args.text_embeddings) if diffusers_model else None
    if diffusers_model:  # layers, frames, output and memory from config.json and the weights' headers: before loading
        shape = diffusers_shape(args.model, args)
        _check_record_flags(args, frames_per_block=shape["chunk"], max_frames=shape["max_frames"], from_nothing=True)
        facts = ModelFacts.of_wan(shape["depth"], shape["tokens"])
    sharded = len(args.record.items) > 1 or world_size > 1
    if args.guidance_pass == "both" and len(args.record.items) > 1:
        raise UsageError("--guidance-pass both writes OUT and OUT.uncond for one clip and draw; accepted: one --clip and "
                         "--seeds 1, or --guidance-pass cond / uncond for a sweep")
    if args.out is not None:  # before the model is even loaded; the default path names the layers, checked below
        _check_out(args, Path(args.out), sharded)
    if facts is not None:
        spec, out = _probe_spec(args, facts, capture, sharded)
    if diffusers_model:
        spec = _fit(args, shape, spec)
    where = placement(args.device, args.dtype)  # the one check of both: the loader and generate trust it

    import torch

    from probes.recorder import record_passes, record_sweep
    from probes.recording import load_run
    from scd import load_model

    if where.device.type == "cuda" and world_size > 1:  # one GPU per rank of the machine
        from scd.devices import Placement

        where = Placement(torch.device("cuda", local_rank), where.dtype)
    options = {"latent_size": args.latent_size or (8, 8), "text_embeddings": embeddings,
               "frames_per_block": args.frames_per_block, "fps": args.fps, "scheduler": args.scheduler} \
        if diffusers_model else {}
    model = _random_baseline(args, where) if args.size is not None else load_model(args.model, device=where, **options)
    if diffusers_model:
        _condition(model, args)
    control = None
    if args.control != "none":
        from scd.zoo import permute_weights, rescaled_control

        control = (permute_weights if args.control == "permuted" else rescaled_control)(model, args.control_seed)
    if spec is None:  # a random model (--size), or a checkpoint whose config only the loader could judge
        spec, out = _probe_spec(args, ModelFacts.of(model), capture, sharded)
    if not diffusers_model:
        spec = _fit(args, model_shape(model, model.layout), spec)
    context_latents, provenance = None, {}
    if diffusers_model:
        provenance = {"prompt": args.prompt, "text_embeddings": args.text_embeddings,
                      "negative_prompt": args.negative_prompt}
        if args.context_video is not None:  # a real video, encoded: its later frames are not the truth
            from scd.files import sha256
            from scd.wan.pipeline import context_from_video

            context_latents = context_from_video(model, args.context_video, args.context)
            video = Path(args.context_video)
            provenance["context"] = {"source": "video", "path": str(video), "latent_frames": args.context,
                                     "sha256": sha256(video) if video.is_file() else None}
    command = "probe " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("probe") else None
    info = {key: value for key, value in (("command", command), ("control", control)) if value is not None}
    if context_latents is not None:
        info["clip"] = args.clips[0]  # a context video given as a tensor: the run still names its --clip
    options = {"layers": spec, "spec": args.record, "device": where, "info": info, "provenance": provenance,
               "progress": not args.quiet, "guidance_pass": args.guidance_pass}
    if not sharded:  # one generation: a run (and OUT.uncond with --guidance-pass both)
        recorded = record_passes(model, args.clips[0] if context_latents is None else context_latents, **options)
        for probe, where_to in zip(recorded, (out, args.uncond_out), strict=False):
            saved = probe.save(where_to)
        run = out.path if len(recorded) > 1 else saved
    else:
        run = out.path
        if record_sweep(model, out, quiet=args.quiet, **options) is None:
            return  # ranks other than 0 report nothing
    if not args.quiet:  # the table of what was written, not a second computation of it
        print(summary_table(load_run(run)))
    print(f"wrote {run}")


def _runs_exist(paths: list[str]) -> None:
    """Refuse a run path that is not a directory before torch is imported (load_run checks the rest, and says the same
    of a missing one)."""
    from scd.files import input_path, readable

    for given in paths:
        path = input_path(given, "run", "a run directory written by probe run", UsageError)
        if not readable(path).is_dir():  # readable: a run whose replacement was killed half way lies aside
            raise UsageError(f"{path} is not a run directory (it does not exist or is a file); accepted: a directory "
                             "written by probe run")


def cmd_show(args: argparse.Namespace) -> None:
    _runs_exist([args.run])
    from probes.recording import load_run

    run = load_run(args.run)
    m = run.manifest
    items = m.get("sweep", {}).get("items")
    which = (f"{len(items)} runs (clips {sorted({i['clip'] for i in items})}, seeds {sorted({i['seed'] for i in items})})"
             if items else f"clip {m.get('clip')}, seed {m.get('seed')}")
    print(f"{m.get('model')} · layers {m.get('layers')} · frames {m.get('frames')} · {len(m.get('steps', []))} steps · "
          f"{which} · {m.get('mode')} mode")
    print(summary_table(run))
    from analyses.claims import requirements

    print("\nWhat each claim needs, and what this run misses (probe report gives the verdicts):")
    for row in requirements(run):
        state = ("not measured: " + "; ".join(row["blocking"]) if row["blocking"] else
                 "inconclusive at best: " + "; ".join(row["weak"]) if row["weak"] else "measurable")
        print(f"- {row['claim']} (layers {', '.join(map(str, row['layers']))}): needs {row['needs']}. {state}")


def cmd_report(args: argparse.Namespace) -> None:
    if Path(args.output).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {args.output!r} is not an .html file; accepted: a path ending in .html")
    output(args.output, "report", args.force, flag="-o")  # before the heavy imports: a refusal comes at once
    _runs_exist(args.runs)
    import matplotlib

    matplotlib.use("Agg")  # the figures go into a file; a desktop backend would want a display
    from analyses.report import write_report

    written = write_report(args.runs, args.output, args.bench, args.interventions, force=args.force,
                           emergence=args.emergence, progress=not args.quiet)
    print(f"wrote {written}")
