"""`probe bench` (SCD against the baseline, side by side), `probe intervene` (the causal tests) and `probe plan` (a
calibrated caching plan from probe runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probe_cli.checks import UsageError, device, estimate_fits, layers, output, size_latent
from scd.contract import paper_layer


def _machine(on) -> str:
    import torch

    from scd.training.train import machine_description

    return machine_description() if on.type == "cpu" else torch.cuda.get_device_name(on)


def _command(name: str) -> str:
    return f"probe {name} " + " ".join(sys.argv[2:]) if sys.argv[0].endswith("probe") else f"probe {name}"


def _fits(model, frames: int, what: str, batch: int = 1) -> None:
    from scd.memory import generation_bytes

    c = model.config
    estimate_fits(generation_bytes(c.width, c.depth, c.heads, c.tokens_per_frame, frames, batch), what)


def _random_models(args: argparse.Namespace, on, dtype, contexts: list[int]) -> dict:
    """Both families at `--size`, random weights, built where they run (refusals come before any is built)."""
    from dataclasses import asdict

    from scd.zoo import SIZES, build_model, random_model

    height, width = size_latent(args.size, args.latent_size)
    shape = {"frame_size": height, "frame_width": width}
    shells = [build_model({"family": family, **asdict(SIZES[family][args.size]), **shape}, device="meta")
              for family in ("baseline", "scd")]  # no weights: sizes and memory are checked before anything is built
    for shell in shells:
        _fits(shell, max(contexts) + args.frames, "the longest timed generation")
    if on.type == "cpu":
        weights = sum(p.numel() for shell in shells for p in shell.parameters())
        estimate_fits(weights * dtype.itemsize, f"the two {args.size} models in {str(dtype).removeprefix('torch.')}")
    return {f"{family}-{args.size}": random_model(family, args.size, on, dtype, **shape) for family in ("baseline", "scd")}


def cmd_bench(args: argparse.Namespace) -> None:
    out = output(args.out, "bench", args.force).path
    if args.size and (args.baseline or args.scd):
        raise UsageError("--size builds both models with random weights; accepted: --size, or --baseline / --scd "
                         "checkpoints, not both")
    if not args.size and args.latent_size:
        raise UsageError("--latent-size sets the frame of the --size models; accepted: --latent-size with --size")
    args.baseline, args.scd = args.baseline or "baseline", args.scd or "scd"
    if not args.size and args.baseline == args.scd:
        raise UsageError(f"--baseline and --scd name the same model {args.scd!r}; accepted: two different models")
    on = device(args.device)
    if args.compile and on.type != "cuda":
        raise UsageError(f"--compile needs a CUDA device (it pays off there); accepted: --compile with --device cuda, "
                         f"not {on}")
    import torch

    from analyses.bench import quality_table, speed_table, write_bench
    from scd.zoo import load_model

    dtype = getattr(torch, args.dtype or ("bfloat16" if on.type == "cuda" else "float32"))
    steps = args.steps or ([4, 50] if args.size else [50, 4])
    contexts = args.context or ([1, 21] if args.size else [4, 16])
    if args.size:
        models = _random_models(args, on, dtype, contexts)
        names = dict(zip(("baseline", "other"), models, strict=True))
    else:
        labels = [Path(name).name.removesuffix(".safetensors") for name in (args.baseline, args.scd)]
        if labels[0] == labels[1]:
            labels = [args.baseline, args.scd]
        names = {"baseline": labels[0], "other": labels[1]}
        models = {label: load_model(name) for label, name in zip(labels, (args.baseline, args.scd), strict=True)}
    shapes = {m.config.frame_shape for m in models.values()}
    if len(shapes) != 1:
        raise UsageError(f"the two models generate frames of different shapes {sorted(shapes)}; accepted: models of one "
                         "frame shape")
    for model in models.values():
        _fits(model, max(contexts) + args.frames, "the longest timed generation")
        if args.compile:  # block by block: the sampler's loop and the KV cache stay in Python
            from scd.models.blocks import Block

            for block in (module for module in model.modules() if isinstance(module, Block)):
                block.compile(mode=args.compile, dynamic=True)
    settings = [(s, context) for s in steps for context in contexts]
    progress = not args.quiet
    speed = speed_table(models, settings, frames=args.frames, repeats=args.repeats, device=on, progress=progress,
                        dtype=dtype)
    if args.size:
        import pandas as pd

        quality = pd.DataFrame(columns=["model", "sample", "clip", "frame", "psnr", "ssim"])
    else:
        quality = quality_table(models, clips=args.clips, samples=args.samples, steps=args.quality_steps,
                                device=on, progress=progress)
    info = {**names, "command": _command("bench"), "machine": _machine(on),
            "device": str(on), "dtype": str(dtype).removeprefix("torch."), "compile": args.compile, "size": args.size,
            "frames": args.frames, "repeats": args.repeats, "clips": args.clips,
            "samples": args.samples, "quality_steps": args.quality_steps, "quality_context": 4, "quality_frames": 4,
            "quality": "random weights (--size): speed and memory only" if args.size else None,
            "configs": {name: m.get_config() for name, m in models.items()},
            "checkpoints": {name: m.checkpoint for name, m in models.items()}}
    write_bench(out, speed, quality, info, force=args.force)
    if progress:
        print((out / "bench.md").read_text())
    print(f"wrote {out}")


def _intervention_layers(text: str, flag: str, depth: int) -> list[int]:
    """'default' (the paper's depths 0, 5, ..., 25, 29, scaled to the model), 'none', or block indices."""
    if text == "none":
        return []
    if text == "default":
        return sorted({paper_layer(layer, depth) for layer in (0, 5, 10, 15, 20, 25, 29)})
    try:
        found = layers(text, depth, flag)
    except UsageError as e:
        raise UsageError(f"{e}; or 'default', 'none'") from None
    return list(range(depth)) if found == "all" else sorted(found)


def _span(text: str, depth: int) -> list[int]:
    """--skip: 'default' (the paper's 8-22, mapped), 'none', or A-B."""
    if text == "none":
        return []
    if text == "default":
        return [paper_layer(8, depth), paper_layer(22, depth)]
    parts = text.split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not int(parts[0]) <= int(parts[1]) < depth:
        raise UsageError(f"--skip {text!r} is not accepted; accepted: A-B with 0 <= A <= B <= {depth - 1}, 'default' or "
                         "'none'")
    return [int(parts[0]), int(parts[1])]


def _read_plan(path: str) -> dict:
    """A plan file written by probe plan (a caching plan or, with --heads, a head plan), refused in one line
    otherwise."""
    import json

    plan_path = Path(path)
    try:
        content = json.loads(plan_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"--plan {path} cannot be read as a plan; accepted: a JSON file written by probe plan") from None
    from analyses.plan_file import HEAD_PLAN_FORMAT, head_plan_problem, plan_problem

    is_heads = isinstance(content, dict) and content.get("format") == HEAD_PLAN_FORMAT
    problem = head_plan_problem(content) if is_heads else plan_problem(content)
    if problem is not None:
        raise UsageError(f"--plan {path}: {problem}; accepted: a file written by probe plan, unedited")
    return content


def _numbers(text: str, flag: str, high: float, most: int, what: str) -> list[float]:
    """Comma-separated distinct numbers in 0..high (at most `most`), refused in one line naming `flag` and `what`."""
    from probe_cli.checks import number

    try:
        values = [number(part, 0, high) for part in text.split(",")]
    except UsageError:
        raise UsageError(f"{flag} {text!r} is not accepted; accepted: comma-separated {what}") from None
    if len(values) > most or len(set(values)) != len(values):
        raise UsageError(f"{flag} {text!r} is not accepted; accepted: at most {most} distinct {what}")
    return values


def _budgets(text: str | None, content: dict) -> list[float]:
    if text is None:
        return [float(content["blocks"]["budget"])]
    return _numbers(text, "--budget", 1e6, 32, "numbers >= 0")


def _refuse_with_plan(args: argparse.Namespace, content: dict, model, steps: int, also: list[tuple],
                      why: str) -> None:
    """What every plan validation refuses: a surgery flag (and `also`: (flag, value, default)), a plan of another
    model, other steps than calibrated (`steps`; 0: not recorded), and validation clips the plan was calibrated on."""
    for flag, value, default in [("--reuse", args.reuse, "default"), ("--knockout", args.knockout, "default"),
                                 ("--skip", args.skip, "default"), ("--diagonal", args.diagonal, "default"),
                                 ("--knockout-layer", args.knockout_layer, "none"), ("--tuned", args.tuned, None),
                                 ("--refresh", args.refresh, None), *also]:
        if value != default:
            raise UsageError(f"{flag} is not run with --plan {why}; accepted: --plan alone, or {flag} without --plan")
    sha = (model.checkpoint or {}).get("sha256")
    if (content.get("checkpoint") or {}).get("sha256") != sha:
        raise UsageError(f"--plan was calibrated on {content.get('model')!r} (sha256 "
                         f"{str((content.get('checkpoint') or {}).get('sha256'))[:12]}), not --model {args.model} "
                         f"(sha256 {str(sha)[:12]}); accepted: a plan of this model")
    if steps and steps != args.steps:
        raise UsageError(f"--plan was calibrated at {steps} steps; --steps {args.steps}; accepted: --steps {steps}")
    calibrated = {item.get("clip") for item in content["calibration"]["items"]}
    validated = set(range(args.first_clip, args.first_clip + args.clips))
    if calibrated & validated:
        raise UsageError(f"val clip {min(calibrated & validated)} is in the plan's calibration set; accepted: held-out "
                         f"clips, e.g. --first-clip {max(c for c in calibrated if c is not None) + 1}")


def _plan_settings(args: argparse.Namespace, content: dict, model) -> tuple[list[tuple], dict, dict]:
    """The plan's validation settings (analyses.plan.validation_settings) and the middle-span skip at the same share
    of skipped block calls; refused where the plan is not of this model and steps, or its calibration clips overlap
    the validation clips."""
    from analyses.plan import PlanError, validation_settings

    _refuse_with_plan(args, content, model, len(content["magcache"]["mag_ratios"]), [],
                      "(its baselines are the model-level skips and the middle-span skip at the plan's speed-up)")
    try:
        settings, schedules, described = validation_settings(content, _budgets(args.budget, content), model.depth)
    except PlanError as e:
        raise UsageError(str(e)) from None
    first, last = _span("default", model.depth)
    for i in [index for kind, index in settings if kind == "plan"]:
        share = described[f"plan{i}"]["skipped_share"]
        keep = min(args.steps, max(1, round(args.steps - share * args.steps * model.depth / (last - first + 1))))
        if ("skip", first, last, keep) in settings:
            continue  # two budgets matched by the same span skip: measured once
        settings.append(("skip", first, last, keep))
        described[f"skip{first}-{last}k{keep}"] = {"matches": f"plan{i}", "skipped_share":
                                                   (args.steps - keep) * (last - first + 1) / (args.steps * model.depth)}
    return settings, schedules, described


def plan_sampling(content: dict) -> dict:
    """`generate`'s sampling options as the plan's calibration sampled: an explicit timestep list (as run: warped
    already), the shift, the sampler and the cache policy (an older plan without them: the defaults)."""
    from scd.contract import CachePolicy

    sampling = content["calibration"].get("sampling") or {}
    options = {"timesteps": sampling.get("timesteps"), "sampler": sampling.get("sampler", "ode")}
    if sampling.get("shift") is not None:
        options["shift"] = float(sampling["shift"])
    if sampling.get("window") is not None:
        options["cache_policy"] = CachePolicy(sampling["window"], sampling.get("sink_frames") or 0,
                                              sampling.get("rope") or "absolute")
    return options


def _diffusers_fits(args: argparse.Namespace, content: dict, config: dict, generation: dict) -> None:
    """Refuse, from the directory's config and weights' headers before anything is loaded, a validation that would
    not fit in memory: the weights (and umT5's, when a prompt is encoded), a generation's KV caches (two with
    guidance), activations and scores, at the context + frames given (`probe_cli.probing.diffusers_shape`)."""
    from types import SimpleNamespace

    from probe_cli.probing import diffusers_shape
    from scd.contract import CachePolicy, CachePolicyError
    from scd.errors import CheckpointError
    from scd.memory import generation_bytes

    options = plan_sampling(content)
    policy = options.get("cache_policy")
    shape_args = SimpleNamespace(latent_size=tuple(config["latent_size"]), frames_per_block=config.get("frames_per_block"),
                                 fps=config.get("fps"), rope=policy.rope if policy else "absolute",
                                 window=policy.window if policy else None, context=args.context, frames=args.frames,
                                 cache_policy=policy or CachePolicy(),
                                 prompt=generation.get("prompt"), negative_prompt=generation.get("negative_prompt"))
    try:
        shape = diffusers_shape(args.model, shape_args)
        shape_args.cache_policy.check(shape["chunk"])
    except (CheckpointError, CachePolicyError) as e:
        raise UsageError(f"the plan's sampling: {e}" if isinstance(e, CachePolicyError) else str(e)) from None
    caches = 2 if generation.get("guidance_scale") not in (None, 1.0) else 1
    estimate_fits(shape["weights"] + shape["text_encoder"] + caches * generation_bytes(
        shape["width"], shape["depth"], shape["heads"], shape["tokens"], args.context + args.frames),
        "one validated generation")


def _plan_diffusers_model(args: argparse.Namespace, content: dict, on):
    """A diffusers model for validating its plan, set up as the plan was calibrated (the calibration's latent size,
    chunk, fps, scheduler, prompt or text embeddings and guidance scale), its frame counts checked."""
    from probe_cli.probing import _text_embeddings
    from scd.errors import CheckpointError
    from scd.zoo import load_model

    calibration = content["calibration"]
    generation, config = calibration.get("generation") or {}, calibration.get("config") or {}
    source = (generation.get("context") or {}).get("source")
    if source not in ("latent noise", "gaussian latents") or not config.get("latent_size"):  # the second: before issue 42
        raise UsageError(f"--plan {args.plan} was calibrated on {source or 'an unrecorded context'}; on a diffusers model "
                         "the held-out set is other Gaussian latent contexts: accepted: a plan calibrated by probe run "
                         "--model diffusers:DIR without --context-video (and probe plan of this version)")
    scheduler = "euler" if (generation.get("scheduler") or {}).get("class") == "FlowMatchEulerDiscreteScheduler" \
        else "pipeline"
    _diffusers_fits(args, content, config, generation)
    try:
        model = load_model(args.model, device=on, latent_size=tuple(config["latent_size"]),
                           text_embeddings=_text_embeddings(generation.get("text_embeddings")),
                           frames_per_block=config.get("frames_per_block"), fps=config.get("fps"), scheduler=scheduler)
        model.check_frames(args.context, args.frames, {"context_frames": "--context", "frames": "--frames"})
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    from scd.wan.pipeline import encode_prompt

    prompt, negative, scale = generation.get("prompt"), generation.get("negative_prompt"), generation.get("guidance_scale")
    text = encode_prompt(model, prompt) if prompt is not None else model.text_embeddings
    guided = scale not in (None, 1.0) and (prompt is not None or negative is not None)
    unconditional = encode_prompt(model, negative or "") if guided else None  # Wan's pipelines: the empty prompt
    model.set_prompt(text, unconditional, 1.0 if scale is None else float(scale))
    return model


def _validate_head_plan(args: argparse.Namespace, content: dict, model, out: Path, on) -> None:
    """`probe intervene --plan HEADS.json`: each of the head plan's budgets beside the unmodified model and its
    redraw, on held-out clips, sampled as the plan was calibrated (its cache policy included), over --frames."""
    from analyses.head_plan import keep_rules
    from analyses.interventions import intervention_table, write_interventions
    from probes.surgery import InterventionError

    calibration = content["calibration"]
    _refuse_with_plan(args, content, model, len(calibration.get("steps") or []), [("--budget", args.budget, None)],
                      "HEADS.json (every budget of a head plan is validated)")
    if "decoder" in model.layout.roles:
        raise UsageError(f"--plan runs on the causal baseline's KV cache; --model {args.model} is an SCD model")
    layers = content["heads"]["layers"]
    if max(layers) >= model.depth or content["heads"]["heads"] != model.config.heads:
        raise UsageError(f"--plan has {content['heads']['heads']} heads in blocks up to {max(layers)}; --model "
                         f"{args.model} has {model.config.heads} heads in {model.depth} blocks; accepted: a plan of it")
    indices = range(len(content["plans"]))
    settings = [("heads", i) for i in indices]
    schedules = {("heads", i): keep_rules(content, i) for i in indices}
    _fits(model, args.context + args.frames, "one intervened generation")
    videos: dict = {}
    try:
        table = intervention_table(model, settings, clips=args.clips, context=args.context, frames=args.frames,
                                   steps=args.steps, seed=args.seed, device=on, progress=not args.quiet, keep=videos,
                                   first_clip=args.first_clip, schedules=schedules, sampling=plan_sampling(content),
                                   draws=args.draws)
    except InterventionError as e:
        raise UsageError(str(e)) from None
    info = {"model": args.model, "checkpoint": model.checkpoint, "depth": model.depth, "command": _command("intervene"),
            "machine": _machine(on), "device": str(on), "clips": args.clips, "first_clip": args.first_clip,
            "context": args.context, "frames": args.frames, "steps": args.steps, "seed": args.seed, "refresh": None,
            "draws": args.draws,
            "head_plan": {"path": str(args.plan), "budgets": [entry["budget"] for entry in content["plans"]],
                          "sampling": calibration.get("sampling") or {}},
            "noise": "clip c, draw j: seed + c + 2j x 2^31; its redraw: seed + c + (2j + 1) x 2^31"}
    write_interventions(out, table, videos, info, force=args.force)
    if not args.quiet:
        print((out / "interventions.md").read_text())


def cmd_intervene(args: argparse.Namespace) -> None:
    out = output(args.out, "interventions", args.force).path
    content = _read_plan(args.plan) if args.plan is not None else None
    if args.budget is not None and content is None:
        raise UsageError("--budget sets a plan's drift budgets; accepted: with --plan FILE, or neither")
    if args.refresh is not None and args.reuse == "none":
        raise UsageError("--refresh applies only to feature reuse, and --reuse is 'none'; accepted: --reuse LAYERS "
                         "or 'default' with --refresh")
    on = device(args.device)
    from analyses.claims import SKIP_CLAIM_STEPS
    from analyses.interventions import intervention_table, write_interventions
    from probes.surgery import InterventionError
    from scd.zoo import load_model

    latent = args.model.startswith("diffusers:")
    if latent and content is None:
        raise UsageError(f"--model {args.model}: on a diffusers model probe intervene validates a caching plan; "
                         "accepted: --plan FILE (the paper's surgeries run on the built-in families)")
    heads = content is not None and content["format"] != "scd-probes-plan/1"
    if latent and heads:
        raise UsageError(f"--model {args.model}: head plans run on the built-in causal baseline's KV cache; accepted: "
                         "a built-in baseline (a caching plan runs on diffusers models)")
    model = _plan_diffusers_model(args, content, on) if latent else load_model(args.model, device=on)
    if heads:
        return _validate_head_plan(args, content, model, out, on)
    if content is not None:
        if "decoder" in model.layout.roles:
            raise UsageError(f"--plan runs on the causal baseline's blocks; --model {args.model} is an SCD model")
        settings, schedules, described = _plan_settings(args, content, model)
        if not latent:
            _fits(model, args.context + args.frames, "one intervened generation")
        videos: dict = {}
        try:
            table = intervention_table(model, settings, clips=args.clips, context=args.context, frames=args.frames,
                                       steps=args.steps, seed=args.seed, device=on, progress=not args.quiet,
                                       keep=videos, first_clip=args.first_clip, schedules=schedules, latent=latent,
                                       sampling=plan_sampling(content), draws=args.draws)
        except InterventionError as e:
            raise UsageError(str(e)) from None
        info = {"model": args.model, "checkpoint": model.checkpoint, "depth": model.depth, "command": _command("intervene"),
                "machine": _machine(on), "device": str(on), "clips": args.clips, "first_clip": args.first_clip,
                "context": args.context, "frames": args.frames, "steps": args.steps, "seed": args.seed, "refresh": None,
                "draws": args.draws,
                "plan": {"path": str(args.plan), "budgets": _budgets(args.budget, content), "settings": described,
                         "sampling": content["calibration"].get("sampling") or {}},
                "noise": "clip c, draw j: seed + c + 2j x 2^31; its redraw: seed + c + (2j + 1) x 2^31",
                **({"contexts": "clip c: Gaussian latents of seed c, as probe run --clip c draws them",
                    "drift": "on the latents: PSNR with the unmodified latent frame's range as the peak; no truth",
                    "generation": content["calibration"].get("generation")} if latent else {})}
        write_interventions(out, table, videos, info, force=args.force)
        if not args.quiet:
            print((out / "interventions.md").read_text())
        return
    roles = model.layout.roles
    scd = "decoder" in roles
    if scd and args.knockout != "none":
        raise UsageError(f"--model {args.model} is an SCD model: knocking out its decoder's only past, the encoder "
                         "output of the frame before, is moot; accepted: --knockout none (reuse: its decoder layers)")
    depth = model.depth
    reuse = _intervention_layers(args.reuse, "--reuse", depth)
    if scd and args.reuse == "default":  # the decoder's layers: the encoder runs once per frame already
        reuse = [layer for layer in range(depth) if roles[layer] == "decoder"]
    for flag, value in (("--skip", args.skip), ("--diagonal", args.diagonal), ("--tuned", args.tuned),
                        ("--tuned-control", args.tuned_control), ("--knockout-layer", args.knockout_layer)):
        if scd and value not in ("none", None) and not (flag != "--tuned" and value == "default"):
            raise UsageError(f"{flag} applies to the causal baseline; --model {args.model} is an SCD model (its encoder "
                             f"runs once per frame, its decoder sees no other frame); accepted: {flag} none")
    span = [] if scd else _span(args.skip, depth)
    diagonal = [] if scd or args.diagonal == "none" else (
        [max(0, depth - 5)] if args.diagonal == "default" else _intervention_layers(args.diagonal, "--diagonal", depth))
    if args.recompute_last and not span:
        raise UsageError("--recompute-last applies to the span skip, and --skip is 'none'; accepted: --skip A-B or "
                         "'default' with --recompute-last")
    if args.recompute_last and max(args.recompute_last) >= args.steps - SKIP_CLAIM_STEPS + 1:
        raise UsageError(f"--recompute-last {max(args.recompute_last)} leaves no skipped step with k = "
                         f"{SKIP_CLAIM_STEPS} of {args.steps}; accepted: m <= {args.steps - SKIP_CLAIM_STEPS - 1}")
    single = [] if scd or args.knockout_layer == "none" else _intervention_layers(args.knockout_layer,
                                                                                   "--knockout-layer", depth)
    settings = [("reuse", k) for k in reuse] + \
               [("knockout", k) for k in _intervention_layers(args.knockout, "--knockout", depth)] + \
               [("knockout-layer", k) for k in single] + \
               [("skip", span[0], span[1], k) for k in (args.keep_steps if span else [])] + \
               [("skip", span[0], span[1], SKIP_CLAIM_STEPS, m) for m in (args.recompute_last or [])] + \
               [("diagonal", k) for k in diagonal]
    others = {}
    if args.tuned is not None:
        tuned = load_model(args.tuned, device=on)
        if "frame-local" not in tuned.layout.roles or tuned.get_config() | {"frame_local_blocks": 0} != \
                model.get_config() | {"frame_local_blocks": 0}:
            raise UsageError(f"--tuned {args.tuned} is not {args.model} with a frame-diagonal mask; accepted: a checkpoint "
                             "of the same size trained with --frame-local-blocks")
        others["diagonal-tuned"] = tuned
    if args.tuned_control is not None:
        if args.tuned is None:
            raise UsageError("--tuned-control is the control of --tuned, which is not given; accepted: both, or neither")
        control = load_model(args.tuned_control, device=on)
        if "frame-local" in control.layout.roles or control.get_config() != model.get_config():
            raise UsageError(f"--tuned-control {args.tuned_control} is not {args.model} fine-tuned without a mask; "
                             "accepted: a checkpoint of the same size trained without --frame-local-blocks")
        others["finetuned"] = control
    if not settings and not others:
        raise UsageError("--reuse, --knockout, --skip and --diagonal are all 'none': nothing to measure; accepted: layer "
                         "lists or 'default'")
    _fits(model, args.context + args.frames, "one intervened generation")
    videos: dict = {}
    try:
        table = intervention_table(model, settings, clips=args.clips, context=args.context, frames=args.frames,
                                   steps=args.steps, seed=args.seed, refresh=args.refresh, device=on,
                                   progress=not args.quiet, keep=videos, others=others, draws=args.draws)
    except InterventionError as e:
        raise UsageError(str(e)) from None
    info = {"model": args.model, "checkpoint": model.checkpoint, "depth": depth,
            "command": _command("intervene"), "machine": _machine(on), "device": str(on), "clips": args.clips,
            "context": args.context, "frames": args.frames, "steps": args.steps, "seed": args.seed, "refresh": args.refresh,
            "tuned": others["diagonal-tuned"].checkpoint if "diagonal-tuned" in others else None,
            "tuned_control": others["finetuned"].checkpoint if "finetuned" in others else None, "draws": args.draws,
            "noise": "clip c, draw j: seed + c + 2j x 2^31; its redraw: seed + c + (2j + 1) x 2^31"}
    write_interventions(out, table, videos, info, force=args.force)
    if not args.quiet:
        print((out / "interventions.md").read_text())
    print(f"wrote {out}")


def _head_plan(args: argparse.Namespace) -> None:
    """`probe plan --heads`: a head plan (analyses.head_plan) from runs with attention recorded."""
    budgets = _numbers(args.heads, "--heads", 1, 16, "attention masses in 0..1")
    for flag, value, default in (("--export", args.export, None), ("--budget", args.budget, 0.1)):
        if value != default:
            raise UsageError(f"{flag} is not used by a head plan; accepted: --heads BUDGETS without {flag}")
    from analyses.head_plan import HeadPlanError, head_plan_summary, write_head_plan

    try:
        written = write_head_plan(args.runs, args.out, budgets, force=args.force)
    except HeadPlanError as e:
        raise UsageError(str(e)) from None
    import json

    for line in head_plan_summary(json.loads(Path(written).read_text())):
        print(line)
    print(f"wrote {written}")


def cmd_plan(args: argparse.Namespace) -> None:
    for run in args.runs:
        if not Path(run).is_dir():
            raise UsageError(f"{run} is not a run directory; accepted: run or sweep directories of probe run --layers all "
                             "--mode full")
    if Path(args.out).suffix.lower() != ".json":
        raise UsageError(f"--out {args.out!r} is not a .json file; accepted: a path ending in .json")
    output(args.out, "plan", args.force)  # before the heavy imports: a refusal comes at once
    if args.heads is not None:
        return _head_plan(args)
    exported = Path(args.out).with_suffix(".diffusers.json") if args.export else None
    if exported is not None:
        output(str(exported), "plan", args.force)
    import json

    from analyses.plan import PlanError, diffusers_cache_configs, plan_summary, write_plan

    try:
        written = write_plan(args.runs, args.out, args.budget, force=args.force)
    except PlanError as e:
        raise UsageError(str(e)) from None
    content = json.loads(Path(written).read_text())
    for line in plan_summary(content):
        print(line)
    print(f"wrote {written}")
    if exported is not None:
        from scd.files import atomic_file, signature

        configs = {**signature("plan"), "export": "diffusers", "plan": str(written),
                   **diffusers_cache_configs(content)}
        with atomic_file(exported, new=not args.force) as tmp:
            tmp.write_text(json.dumps(configs, indent=2) + "\n")
        print(f"wrote {exported} (MagCacheConfig, TaylorSeerCacheConfig: analyses.plan.cache_config)")
