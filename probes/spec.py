"""What a Probe records, checked once: `ProbeSpec.check` is the one place where every Probe option is validated,
against the facts of the model it will hear (`ModelFacts`), for `Probe(...)`, `probes.record` and `probe run` alike.
The recorder trusts a spec it is given. No torch: `probe run` checks a shipped or diffusers model's options from its
config before importing it.

    facts = ModelFacts.of(model)                       # or from a config, before the weights load
    spec = ProbeSpec.check(facts, layers=[15], bands=3)
    Probe(model, spec)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral

from probes.choices import BACKENDS, CAPTURES, GUIDANCE_PASSES, MODES, ChoiceError, checked_layers
from probes.errors import ProbeError
from scd.contract import BUILTIN_HOOKS, HOOKS

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


def _index(value: object) -> bool:
    """A non-negative integer, numpy's included (numbers.Integral: no numpy import before torch)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 0


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
        if not _index(pca_tokens) or pca_tokens < 1:
            raise refuse("pca_tokens", f"{pca_tokens!r} is not accepted; accepted: an integer >= 1")
        if not _index(sample_seed):
            raise refuse("sample_seed", f"{sample_seed!r} is not accepted; accepted: an integer >= 0")
        n = facts.tokens_per_frame
        if not _index(bands) or not 1 <= bands <= n:
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
                                      or not all(_index(v) for v in given)):
                raise refuse(name, f"{given!r} is not accepted; accepted: None (all) or a collection of integers >= 0")
            chosen[name] = None if given is None else frozenset(int(v) for v in given)
        return cls(facts, probed, captured, chosen["frames"], chosen["steps"], hook, mode,
                    backend or ("hookpoints" if facts.has_hookpoints else "nnsight"), pca_tokens, sample_seed, int(bands),
                    guidance_pass)
