"""What a `Probe` accepts by name, importable without torch: the `probe` command lists them in its help."""

from collections.abc import Iterable

CAPTURES = ("features", "attention")  # what a Probe records per (layer, frame, step)
MODES = ("full", "stream")            # keep every token, or running reductions and a token subsample
BACKENDS = ("hookpoints", "nnsight")  # how a model is read: TransformerLens HookPoints, or nnsight by module path
GUIDANCE_PASSES = ("cond", "uncond")  # which pass of classifier-free guidance a Probe records


class ChoiceError(ValueError):
    """A choice of layers (or another probe setting) that the model at hand cannot take; one line."""


def checked_layers(layers: object, depth: int, roles: str = "") -> list[int]:
    """The one check of a layer choice, wherever it enters (a Probe, `probe run --layers`, `probe intervene`):
    "all", an index or a collection of distinct block indices in 0..depth-1; the indices, in the order given.
    `roles` is added to the accepted values (e.g. " (encoder 0..24, decoder 25..34)")."""
    accepted = f"block indices in 0..{depth - 1}{roles} (integers), or 'all'"
    if layers == "all":
        return list(range(depth))

    def index(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if index(layers):
        layers = [layers]
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise ChoiceError(f"layers {layers!r} is not accepted; accepted: {accepted}")
    found = list(layers)
    wrong = [v for v in found if not index(v)]
    if wrong:
        raise ChoiceError(f"layer {wrong[0]!r} is not an integer; accepted: {accepted}")
    if not found:
        raise ChoiceError(f"no layer to probe; accepted: {accepted}")
    twice = sorted({v for v in found if found.count(v) > 1})
    if twice:
        raise ChoiceError(f"layer {twice[0]} is given twice (duplicate layers); accepted: {accepted}, each once")
    for layer in found:
        if not 0 <= layer < depth:
            raise ChoiceError(f"layer {layer} is out of range; accepted: {accepted}")
    return [int(v) for v in found]
