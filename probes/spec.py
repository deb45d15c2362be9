"""What a Probe records and what `record` generates, checked once: `ProbeSpec.check` is the one place where every
Probe option is validated, against the facts of the model it will hear (`ModelFacts`); `RecordSpec.check` the one
place for what `record` draws and generates (clips, noise draws and seeds, frame counts, scene, and the sampling,
through `scd.sampling_spec.SamplingSpec`), for `Probe(...)`, `probes.record`, `record_sweep` and `probe run` alike.
The recorder trusts specs it is given. No torch: `probe run` checks a shipped or diffusers model's options from its
config before importing it.

    facts = ModelFacts.of(model)                       # or from a config, before the weights load
    spec = ProbeSpec.check(facts, layers=[15], bands=3)
    Probe(model, spec)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from numbers import Integral

from probes.choices import BACKENDS, CAPTURES, GUIDANCE_PASSES, MODES, ChoiceError, checked_layers
from probes.errors import ProbeError
from probes.sweep_plan import noise_seed
from scd.contract import BUILTIN_HOOKS, HOOKS
from scd.sampling_spec import PYTHON_NAMES as SAMPLING_NAMES
from scd.sampling_spec import SamplingSpec
from scd.training.config import SCENES

FEATURE_HOOKS = tuple(h for h in HOOKS if not h.startswith("attn."))  # hooks whose output can be the features
PYTHON_NAMES = {name: name for name in ("layers", "capture", "frames", "steps", "hook", "mode", "backend", "pca_tokens",
                                        "sample_seed", "bands", "guidance_pass")}


@dataclass(frozen=True)
class ModelFacts:
    """What the checks of a Probe's options need of a model, known before its weights load."""
    kind: str                        # the model's class, said in refusals
    roles: tuple[str, ...]           # each block's role, in execution order (its length is the depth)
    tokens_per_frame: int            # tokens of one frame
    hooks: tuple[str, ...]           # the HookPoints every block offers
    has_hookpoints: bool             # TransformerLens HookPoints (else nnsight reads modules by path)

    @property
    def depth(self) -> int:
        return len(self.roles)

    @classmethod
    def of(cls, model) -> ModelFacts:
        """The facts of a model implementing `scd.contract.VideoDiffuser`."""
        layout = model.layout
        return cls(type(model).__name__, tuple(layout.role(i) for i in range(layout.depth)), layout.tokens_per_frame,
                   tuple(h for h in HOOKS if layout.has_hook(h)), bool(model.has_hookpoints))

    @classmethod
    def of_builtin(cls, config: dict, roles: tuple[str, ...]) -> ModelFacts:
        """The facts of a built-in model (scd.models) from its checkpoint config and `scd.contract.builtin_roles`."""
        kind = {"baseline": "CausalVideoDiffuser", "scd": "SeparableCausalDiffuser"}[config["family"]]
        side = config["frame_size"] // config["patch_size"]
        return cls(kind, roles, side * side, BUILTIN_HOOKS, True)

    @classmethod
    def of_wan(cls, depth: int, tokens_per_frame: int) -> ModelFacts:
        """The facts of a causal Wan / SkyReels-V2 transformer (`scd.load_model('diffusers:DIR')`) from its config."""
        from scd.wan.checks import HOOK_PATHS

        return cls("CausalWan", ("causal",) * depth, tokens_per_frame,
                   tuple(h for h in HOOKS if h in HOOK_PATHS), True)


def _int(value: object, low: float = 0, high: float = math.inf) -> bool:
    """An integer in low..high (default: any >= 0), numpy's included (numbers.Integral: no numpy import before torch)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class ProbeSpec:
    """A Probe's options, checked against one model's facts (ProbeSpec.check): the recorder trusts them."""
    facts: ModelFacts
    layers: tuple[int, ...]               # probed block indices, in the order given
    capture: tuple[str, ...]              # what is recorded: CAPTURES
    frames: frozenset[int] | None         # video frame indices to record; None: every generated frame
    steps: frozenset[int] | None          # denoising step indices to record; None: all
    hook: str                             # the block HookPoint whose output is the features
    mode: str                             # full (every token) or stream (running reductions, a token subsample)
    backend: str                          # hookpoints or nnsight
    pca_tokens: int                       # tokens kept per step in stream mode
    sample_seed: int                      # seed of that token subsample
    bands: int                            # rows and columns per frame of the pooled attention map
    guidance_pass: str                    # which pass of classifier-free guidance is recorded

    @classmethod
    def check(cls, facts: ModelFacts, layers: object = (15,), *, capture: object = CAPTURES, frames: object = None,
              steps: object = None, hook: object = "hook_resid_post", mode: object = "full", backend: object = None,
              pca_tokens: object = 256, sample_seed: object = 0, bands: object = 3, guidance_pass: object = "cond",
              names: dict[str, str] = PYTHON_NAMES) -> ProbeSpec:
        """Every option validated, once (ProbeError naming the value as `names` calls it, and the accepted values).
        `layers`: block indices or "all"; `backend`: None picks hookpoints where the model has them, else nnsight."""
        def refuse(name: str, text: str) -> ProbeError:
            return ProbeError(f"{names[name]}: {text}")

        spans: dict[str, list[int]] = {}
        for layer, role in enumerate(facts.roles):
            spans.setdefault(role, []).append(layer)
        roles = "" if set(spans) <= {"causal"} else \
            " (" + ", ".join(f"{role} {v[0]}..{v[-1]}" for role, v in spans.items()) + ")"
        try:
            probed = tuple(checked_layers(layers, facts.depth, roles))
        except ChoiceError as e:
            raise refuse("layers", str(e)) from None
        captured = (capture,) if isinstance(capture, str) else tuple(capture) if isinstance(capture, Iterable) else ()
        unknown = [c for c in captured if c not in CAPTURES]
        if unknown or not captured:
            shown = f"unknown kind {unknown[0]!r}" if unknown else f"{capture!r} names no kind"
            raise refuse("capture", f"{shown}; accepted: {', '.join(CAPTURES)}, each once")
        if len(set(captured)) != len(captured):
            raise refuse("capture", f"{capture!r} names a kind twice; accepted: {', '.join(CAPTURES)}, each once")
        if mode not in MODES:
            raise refuse("mode", f"unknown probe mode {mode!r}; accepted: {', '.join(MODES)}")
        if hook not in FEATURE_HOOKS:
            raise refuse("hook", f"unknown feature hook {hook!r}; accepted: {', '.join(FEATURE_HOOKS)}")
        if hook not in facts.hooks:
            offered = ", ".join(h for h in FEATURE_HOOKS if h in facts.hooks)
            raise refuse("hook", f"a {facts.kind} has no feature hook {hook!r}; accepted: {offered}")
        if not _int(pca_tokens) or pca_tokens < 1:
            raise refuse("pca_tokens", f"{pca_tokens!r} is not accepted; accepted: an integer >= 1")
        if not _int(sample_seed):
            raise refuse("sample_seed", f"{sample_seed!r} is not accepted; accepted: an integer >= 0")
        n = facts.tokens_per_frame
        if not _int(bands) or not 1 <= bands <= n:
            raise refuse("bands", f"{bands!r} is not accepted; accepted: an integer in 1..{n} (the tokens of a frame)")
        if guidance_pass not in GUIDANCE_PASSES:
            raise refuse("guidance_pass", f"unknown pass {guidance_pass!r}; accepted: {', '.join(GUIDANCE_PASSES)}")
        if backend is not None and backend not in BACKENDS:
            raise refuse("backend", f"unknown probe backend {backend!r}; accepted: {', '.join(BACKENDS)}")
        if backend == "nnsight" and guidance_pass != "cond":  # one nnsight trace spans both passes of a guided step
            raise refuse("backend", "the nnsight backend records the conditional pass of a guided model (the first of "
                                    "the trace); accepted: hookpoints for the unconditional pass")
        if backend == "hookpoints" and not facts.has_hookpoints:
            raise refuse("backend", f"a {facts.kind} has no HookPoints; accepted: nnsight")
        chosen = {}
        for name, given in (("frames", frames), ("steps", steps)):
            if given is not None and (isinstance(given, str) or not isinstance(given, Iterable)
                                      or not all(_int(v) for v in given)):
                raise refuse(name, f"{given!r} is not accepted; accepted: None (all) or a collection of integers >= 0")
            chosen[name] = None if given is None else frozenset(int(v) for v in given)
        return cls(facts, probed, captured, chosen["frames"], chosen["steps"], hook, mode,
                    backend or ("hookpoints" if facts.has_hookpoints else "nnsight"), pca_tokens, sample_seed, int(bands),
                    guidance_pass)


# Where an integer clip's context comes from: the val benchmark's clip, or seeded Gaussian latents (the latent models,
# and a random baseline built by `probe run --size`, which have no benchmark truth to compare with); auto: the
# benchmark where the model's frames have one.
CONTEXT_SOURCES = ("auto", "benchmark", "latent noise")
RECORD_NAMES = {**SAMPLING_NAMES, **{name: name for name in ("clips", "draws", "noise", "clip_frames", "scene",
                                                             "context_source")}}
CLIP_MAX = 2**31 - 1     # a val clip index (its numpy seed is 2 * index + 1)
SEED_MAX = 2**63 - 1     # a 64-bit seed (scd.sampling.noise_generator mixes those above 2^32 into the 32 bits torch keeps)
MAX_ITEMS = 10_000       # generations of one sweep (clips x draws)
CLIP_FRAMES_MAX = 4096   # frames of one drawn clip (scd.data.VideoBenchmark's bound)


@dataclass(frozen=True)
class RecordSpec:
    """What `record` draws and generates, checked once (RecordSpec.check): the recorder and `generate` trust it."""
    sampling: SamplingSpec            # how each item is generated (steps, cache, frame counts); its seed the first item's
    clips: tuple[int, ...]            # val clip indices (latent models: the seeds of their Gaussian context); () a tensor
    draws: int                        # noise draws per clip
    seed: int                         # base seed: draw d of clip c is generated with noise_seed(seed, c, d)
    clip_frames: int                  # frames drawn per clip (>= context + generated); the context is their prefix
    scene: str                        # the benchmark scene of the clips
    context_source: str               # benchmark or latent noise (a tensor context: "tensor")

    @property
    def items(self) -> list[tuple[int, int]]:
        """(clip, generation seed) of each generation, clips outer: a sweep's items."""
        return [(clip, noise_seed(self.seed, clip, draw)) for clip in self.clips for draw in range(self.draws)]

    def item(self, clip: int, noise: int) -> RecordSpec:
        """The spec of one generation of the sweep (`items`): trusted, its values derived from checked ones."""
        assert clip in self.clips and any(noise == noise_seed(self.seed, clip, d) for d in range(self.draws))
        return replace(self, sampling=replace(self.sampling, seed=noise), clips=(clip,), draws=1)

    @classmethod
    def check(cls, *, clips: object = (0,), draws: object = 1, seed: object = 0, noise: object = None,
              context_frames: object = 4, frames: object = 4, clip_frames: object = None, scene: object = "sprites",
              context_source: object = "auto", has_benchmark: bool = True, frames_per_block: int = 1,
              max_frames: int | None = None, from_nothing: bool = False, names: dict[str, str] = RECORD_NAMES,
              **sampling) -> RecordSpec:
        """Every value validated, once (a ProbeError naming the value as `names` calls it, and the accepted values;
        the sampling's by `SamplingSpec.check`, a SamplingError). `clips`: val clip indices, or None for a tensor context of
        `context_frames` frames; `noise`: the one generation's seed itself (a sweep's draw), in place of
        `noise_seed(seed, clip)`; `has_benchmark`, `frames_per_block`, `max_frames`, `from_nothing`: the model's facts
        (`context_source="auto"` takes the benchmark where it has one); `sampling`: SamplingSpec.check's values (steps,
        timesteps, warp, shift, sampler, cache_policy)."""
        def refuse(name: str, text: str) -> ProbeError:
            return ProbeError(f"{names[name]}: {text}")

        if clips is None:  # a tensor context: no clip, no benchmark
            chosen, source = (), "tensor"
        else:
            chosen = tuple(clips) if isinstance(clips, Iterable) and not isinstance(clips, str | bytes) else ()
            if not chosen or not all(_int(c, 0, CLIP_MAX) for c in chosen) or len(set(chosen)) != len(chosen):
                raise refuse("clips", f"{clips!r} is not accepted; accepted: distinct clip indices, each an integer in "
                                      f"0..{CLIP_MAX}")
            if context_source not in CONTEXT_SOURCES:
                raise refuse("context_source", f"{context_source!r} is not accepted; accepted: "
                                                f"{', '.join(CONTEXT_SOURCES)}")
            source = ("benchmark" if has_benchmark else "latent noise") if context_source == "auto" else context_source
        if scene not in SCENES:
            raise refuse("scene", f"{scene!r} is not accepted; accepted: {', '.join(SCENES)}")
        if scene != "sprites" and source != "benchmark":
            raise refuse("scene", f"{scene!r} picks benchmark clips; a {source} context takes none; accepted: "
                                  "sprites (the default)")
        if not _int(draws, 1, 1000):
            raise refuse("draws", f"{draws!r} is not accepted; accepted: an integer in 1..1000")
        if len(chosen) * draws > MAX_ITEMS:
            raise refuse("draws", f"{len(chosen)} clips x {draws} draws make {len(chosen) * draws} generations; "
                                  f"accepted: at most {MAX_ITEMS}")
        if not _int(seed, 0, SEED_MAX):
            raise refuse("seed", f"{seed!r} is not accepted; accepted: an integer in 0..2**63-1")
        if chosen and noise_seed(seed, max(chosen), draws - 1) > SEED_MAX:
            room = SEED_MAX - noise_seed(0, max(chosen), draws - 1)
            raise refuse("seed", f"{seed} + clip {max(chosen)} + draws leave the 64-bit seed range; accepted: at most "
                                 f"{room}")
        if noise is not None and (len(chosen) * draws > 1 or not _int(noise, 0, SEED_MAX)):
            raise refuse("noise", f"{noise!r} is not accepted; accepted: None, or the seed of one generation (an "
                                  "integer in 0..2**63-1)")
        first = (seed if not chosen else noise_seed(seed, chosen[0])) if noise is None else noise
        checked = SamplingSpec.check(**sampling, seed=first, context_frames=context_frames, frames=frames,
                                     frames_per_block=frames_per_block, max_frames=max_frames,
                                     from_nothing=from_nothing, names=names)
        if source == "benchmark" and checked.context_frames == 0:
            raise refuse("context_frames", "0 takes no benchmark frame; accepted: 1 or more for a benchmark clip")
        needed = checked.context_frames + checked.frames
        drawn = needed if clip_frames is None else clip_frames
        if chosen and not _int(drawn, needed, CLIP_FRAMES_MAX):
            raise refuse("clip_frames", f"{drawn!r} is not accepted; accepted: an integer in {needed}..{CLIP_FRAMES_MAX} "
                                        f"(at least context + generated frames, {needed})")
        return cls(checked, chosen, draws, seed, drawn, scene, source)
