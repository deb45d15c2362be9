"""`Probe`: record what chosen layers compute for every generated frame at every denoising step.

    with Probe(model, layers=[15, 28]) as probe:
        video = generate(model, context=clip[:4], frames=4, steps=50, seed=0)
    probe.save("reports/runs/demo", ground_truth=clip[:8])

The probe hears from `generate` (through `scd.sampling.observe_sampling`) which frame and step each
forward pass belongs to, and reads the layers through a backend (TransformerLens HookPoints, or
nnsight by module path). Only the tokens of the frame being denoised are kept: with the KV cache
they are all the queries of a pass, without it the last frame's tokens of the recomputed sequence.
Cache-writing passes (a finished frame at timestep 0) are not recorded, except by SCD's encoder
layers, which run in no other pass: they are recorded once per frame (one "step"). SCD's decoder
layers are recorded at every step like the baseline's (the frame's half of the decoder sequence;
attention on its two halves: the encoder output of the frame before, and the frame).

What is recorded per (layer, probed frame, step):
- `features`: `full` mode keeps the tokens [N, D]; `stream` mode keeps a fixed, seeded subsample of
  tokens (for PCA). Both build the step x step inner products as the steps arrive (`StepGram`).
- `attention`: the share of the frame's attention (averaged over its query tokens) on each frame of
  the clip, per head, from q and k as the softmax sees them; and the paper's pooled map: the frame's
  queries in `bands` bands against every key of the clip in `bands` bands per frame, each cell the
  mean attention probability of one of its keys (`attention_mass_by_cell`, `pooled_map`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch import nn

from probes.attention import derived_entries, pooled_attention, token_bands
from probes.backends import get_backend
from probes.choices import CAPTURES
from probes.errors import ProbeError
from probes.recording import BOOKKEEPING, Recording, memory_source
from probes.reductions import StepGram
from probes.spec import ModelFacts, ProbeSpec
from scd.contract import ACCEPTED_MODELS, CROSS_ATTENTION_HOOKS, CachePolicy, LayoutError, is_video_diffuser
from scd.sampling import noise_generator, observe_sampling

# Keys held for the batched attention of one pass (float elements), past which it is computed at once: at Wan's
# 480p scale (21 frames x 1,560 tokens x 1,536 wide) that is about one layer, on the shipped baseline all 30.
PENDING_BUDGET = 2**26


def _attention_of_group(queries: list[torch.Tensor], keys: list[torch.Tensor], key_cells: torch.Tensor, cells: int,
                        band_of_token: torch.Tensor, band_share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame mass [B, H, frames] and pooled map [B, H, bands, cells] of B layers' queries [n, H, D] over keys
    [L, H, D] that lie in the same cells."""
    # Stacked heads-first ([B, H, L, D], one copy), read through [B, L, H, D] views: no second copy inside.
    q = torch.stack([query.transpose(0, 1) for query in queries]).transpose(1, 2)
    k = torch.stack([key.transpose(0, 1) for key in keys]).transpose(1, 2)
    g = len(band_share)
    per_band = pooled_attention(q, k, key_cells, cells, band_of_token, g)  # [B, H, g, cells]
    # Over all of the frame's queries: the band means weighted by the bands' shares of the tokens.
    by_frame = (per_band * band_share.to(per_band.device)[:, None]).sum(2)
    by_frame = by_frame.view(*by_frame.shape[:2], -1, g).sum(-1)  # [B, H, frames]
    sizes = torch.bincount(key_cells, minlength=cells).clamp_min(1).to(per_band.device, per_band.dtype)
    return by_frame.cpu(), (per_band / sizes).cpu()  # the map: the mean probability of one key of each cell


def _frames_uint8(video: torch.Tensor) -> np.ndarray:
    """[T, C, H, W] in [-1, 1] -> uint8 [T, H, W, C]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# The entries a recording's manifest holds of its own (`Probe._manifest_of`, and what write_run adds): `annotate`
# refuses them as names of the caller's entries, which would replace them. Not "model": the name shown for the model
# is the caller's to give (the weights themselves are named by "checkpoint", with their sha256).
MANIFEST_KEYS = ("checkpoint", "config", "parameters", "depth", "block_roles", "layers", "layer_roles",
                 "layer_paths", "hook", "capture", "mode", "backend", "tokens_per_frame", "bands", "frames_per_block",
                 "token_grid", "frames", "context", "num_frames", "steps", "timesteps", "ground_truth", "input_layer",
                 "guidance", "sampling", "video_frames", "video_context_frames", "video_shows", *BOOKKEEPING)


def check_manifest_entries(entries: dict) -> None:
    """Refuse (ProbeError, one line) caller's manifest entries that would replace the recording's own
    (MANIFEST_KEYS) or are not JSON values."""
    taken = sorted(set(entries) & set(MANIFEST_KEYS))
    if taken:
        raise ProbeError(f"manifest entries {taken} are the recording's own; accepted: other names (e.g. clip, seed, "
                         "command)")
    try:
        json.dumps(entries, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ProbeError(f"manifest entries must be JSON values ({e}); accepted: strings, finite numbers, booleans, "
                         "None, and lists and dicts of them") from None


class Probe(Recording):
    """Context manager that records features and per-frame attention of chosen layers during `generate`; after its
    `with` block it is the live `Recording` of what it heard (`probes.recording`), read and saved like a loaded run."""

    def __init__(
        self, model: nn.Module, layers: Sequence[int] | str | ProbeSpec = (15,), *, capture: Iterable[str] = CAPTURES,
        frames: Iterable[int] | None = None, steps: Iterable[int] | None = None, hook: str = "hook_resid_post",
        mode: str = "full", backend: str | None = None, pca_tokens: int = 256, sample_seed: int = 0, bands: int = 3,
        guidance_pass: str = "cond",
    ) -> None:
        """`layers`: block indices or "all", or a `ProbeSpec` checked for this model (then the other options are its
        own, and nothing is checked again); `frames`: video frame indices to probe (default every generated
        frame); `steps`: denoising step indices to record (default all); `hook`: the block HookPoint whose
        output is the features; `backend`: "hookpoints" or "nnsight" (default: hookpoints where the model
        has them, else nnsight); `pca_tokens`: tokens kept per step in `stream` mode; `bands`: rows and columns
        per frame of the pooled attention map (1..tokens per frame; the paper's figure shows about 3); `guidance_pass`:
        which pass of a model under classifier-free guidance is recorded, "cond" or "uncond"."""
        Recording.__init__(self, {}, None)
        if not is_video_diffuser(model):
            raise ProbeError(f"cannot probe a {type(model).__name__}; accepted: {ACCEPTED_MODELS}")
        facts = ModelFacts.of(model)
        if isinstance(layers, ProbeSpec):  # checked already (probes.record, probe run): trusted, if for this model
            spec = layers
            if spec.facts != facts:
                raise ProbeError(f"the ProbeSpec was checked for another model ({spec.facts.kind}, {spec.facts.depth} "
                                 f"blocks); accepted: one checked with ModelFacts.of(this model)")
        else:
            spec = ProbeSpec.check(facts, layers, capture=capture, frames=frames, steps=steps, hook=hook, mode=mode,
                                   backend=backend, pca_tokens=pca_tokens, sample_seed=sample_seed, bands=bands,
                                   guidance_pass=guidance_pass)
        self.spec = spec
        self.model, self.layout = model, model.layout
        depth = self.layout.depth
        self._probed = list(spec.layers)
        self.capture, self.guidance_pass = spec.capture, spec.guidance_pass
        self._wanted_frames = None if spec.frames is None else set(spec.frames)
        self._wanted_steps = None if spec.steps is None else set(spec.steps)
        self.hook, self.mode, self.backend, self.pca_tokens, self._bands = (spec.hook, spec.mode, spec.backend,
                                                                          spec.pca_tokens, spec.bands)
        n = self.layout.tokens_per_frame
        self.band_of_token = token_bands(n, self._bands)
        self._band_share = torch.bincount(self.band_of_token, minlength=self._bands) / n  # each band's share of the tokens
        generator = noise_generator(spec.sample_seed)
        # The same tokens at every step and frame, so PCA images line up on the token grid.
        self._token_index = torch.randperm(n, generator=generator)[: min(spec.pca_tokens, n)].sort().values
        self._encoder_layers = [layer for layer in self._probed if self.layout.role(layer) == "encoder"]
        # Asked at every hook of every pass: kept as plain lookups (nn.Module attribute misses are slow).
        self._roles = [self.layout.role(layer) for layer in range(depth)]
        self._is_encoder = [role == "encoder" for role in self._roles]
        self._feature_layers = set(self._probed) if "features" in self.capture else set()
        # The noise floor of finding 1: how much the frame's input to the stepwise blocks (the first one's
        # hook_resid_pre: the noisy frame, embedded) itself changes across steps. Models without that hook go without.
        stepwise = [layer for layer in range(depth) if self.layout.role(layer) != "encoder"]
        has_input = bool(stepwise) and self.layout.has_hook("hook_resid_pre") and "features" in self.capture
        self.input_layer = stepwise[0] if has_input else None
        # Blocks with cross-attention to a text (the Wan families): the share of their attention update that comes
        # from the text, recorded with the attention.
        self._text_layers = {layer for layer in self._probed if "attention" in self.capture and
                             self.layout.has_hook("hook_cross_out") and self.layout.role(layer) != "encoder"}
        self._stack: ExitStack | None = None
        self._reset()

    # -- recording -------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.current: tuple[tuple[int, ...], int, float] | None = None  # (frames, step, timestep) of the pass
        self._open: tuple[int, ...] | None = None           # the frames whose step buffers are held
        self._tail: dict[int, int] = {}                     # wanted frame -> its tokens' distance from the pass's end
        self._timesteps: dict[int, dict[int, float]] = {}    # frame -> step -> timestep
        self.num_frames = 0                                 # frames the sampler announced: the clip length
        self._policy: CachePolicy | None = None             # which earlier frames each pass sees (generate says)
        self._sampling: dict | None = None                  # sampler, timesteps and cache policy, for the manifest
        self.context: int | None = None                     # frames given before the first denoised one
        self._video: torch.Tensor | None = None
        self._source, self.manifest = None, {}             # the live recording, built when first read
        self._info: tuple[torch.Tensor | None, dict] = (None, {})  # ground truth and manifest entries (`annotate`)
        self._built: tuple | None = None                   # the recorded tensors and video, stacked once (`_entries`)
        self._features: dict[int, dict[int, list[torch.Tensor]]] = {layer: {} for layer in self._probed}
        self._grams: dict[int, dict[int, StepGram]] = {layer: {} for layer in self._probed}
        self._mass: dict[int, dict[int, list[torch.Tensor]]] = {layer: {} for layer in self._probed}
        self._map: dict[int, dict[int, list[torch.Tensor]]] = {layer: {} for layer in self._probed}
        self._query: dict[int, torch.Tensor] = {}
        self._input_grams: dict[int, StepGram] = {}
        self._input_features: dict[int, list[torch.Tensor]] = {}
        self._text: dict[int, dict[int, list[torch.Tensor]]] = {layer: {} for layer in self._text_layers}
        self._update: dict[tuple[int, int], torch.Tensor] = {}  # (layer, frame): block input, then self-attention update
        self._pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (layer, frame, queries, keys)
        self._pending_elements = 0
        self._cells: dict[tuple[str, int, int], tuple[torch.Tensor, int]] = {}  # (role, frame, keys) -> key cells

    def on_start(self, context: int, frames: int, steps: int, *, policy: CachePolicy | None = None,
                 sampling: dict | None = None) -> None:
        """Told by `generate` before any work: refuse frames or steps to probe that this call will not make; note
        the cache policy (which earlier frames each pass sees) and the sampling the manifest records."""
        self._policy, self._sampling = policy, sampling
        made = range(context, context + frames)
        missing = sorted((self._wanted_frames or set()) - set(made))
        if missing:
            raise ProbeError(f"frame {missing[0]} is asked for, but generate makes frames {context}..{context + frames - 1}; "
                             "accepted: frames in that range, or None")
        missing = sorted((self._wanted_steps or set()) - set(range(steps)))
        if missing:
            raise ProbeError(f"step {missing[0]} is asked for, but generate runs steps 0..{steps - 1}; "
                             "accepted: steps in that range, or None")

    def on_step(self, frame: int, step: int | None, timestep: float) -> None:
        """Told by `generate` before every forward pass (see `scd.sampling.observe_sampling`); `frame` is the last
        frame of the pass's chunk (`Layout.frames_per_block` frames denoised together; 1 for most models)."""
        self._flush()  # the previous pass is over: its attention, batched over layers
        self.num_frames = max(self.num_frames, frame + 1)
        chunk = self.layout.chunk(frame) if step is not None else range(frame, frame + 1)
        if step is not None and self.context is None:
            self.context = chunk[0]
        wanted = tuple(f for f in chunk if self._wanted_frames is None or f in self._wanted_frames)
        if step is None:  # a finished frame written into the cache: only encoder layers record it
            probed = wanted and self._encoder_layers and self.context is not None and frame >= self.context
        else:
            probed = wanted and (self._wanted_steps is None or step in self._wanted_steps)
        if self._open and (set(self._open) != set(wanted) or step is None):  # the open frames are done
            self._release(self._open)
        self.current = (wanted, step, timestep) if probed else None
        if probed:
            self._open = wanted
            # Tokens of each wanted frame from the end of the pass (its chunk is frame-major), asked at every hook.
            n = self.layout.tokens_per_frame
            self._tail = {f: (self.layout.chunk(f)[-1] - f) * n for f in wanted}
            for f in wanted:
                steps = self._timesteps.setdefault(f, {})
                if step is not None:
                    steps[step] = timestep

    def on_video(self, video: torch.Tensor) -> None:
        """Told by `generate` of the finished video."""
        self._flush()
        if self._open:
            self._release(self._open)
        self.current = None
        self._video = video

    def _release(self, frames: tuple[int, ...]) -> None:
        """Frames are done: free their per-step buffers (stream mode's memory does not grow with frames)."""
        self._open = None
        for grams in (*self._grams.values(), self._input_grams):
            for frame in frames:
                if frame in grams:
                    grams[frame].release()

    def _active(self, layer: int) -> bool:
        """Does `layer` run, and is it recorded, in the pass under way?"""
        if self.current is None:
            return False
        if self.model.guidance_pass not in (None, self.guidance_pass):  # two passes per step
            return False
        return (self.current[1] is None) == self._is_encoder[layer]

    def _frame_tokens(self, tensor: torch.Tensor, frame: int) -> torch.Tensor:
        """The tokens of `frame` in a pass: the pass ends with the tokens of its chunk, frame-major."""
        if tensor.shape[0] != 1:
            raise ProbeError(f"a Probe records one video at a time, through the KV cache for SCD (use_cache=True); "
                             f"a pass had a batch of {tensor.shape[0]}")
        n = self.layout.tokens_per_frame
        end = tensor.shape[1] - self._tail[frame]
        return tensor[0, end - n:end]

    def _receive(self, layer: int, hook: str, tensor: torch.Tensor) -> None:
        frames, step, _ = self.current
        if hook == "attn.hook_q":
            self._query[layer] = tensor.detach()
            return
        for frame in frames:
            self._receive_frame(layer, hook, tensor, frame)
        if hook == "attn.hook_k":
            del self._query[layer]

    def _receive_frame(self, layer: int, hook: str, tensor: torch.Tensor, frame: int) -> None:
        if (layer, hook) == (self.input_layer, "hook_resid_pre"):
            x = self._input_grams.setdefault(frame, StepGram()).add(self._frame_tokens(tensor, frame).detach())
            if self.mode == "full":  # the input's features too: the floor of the functional test (analyses.redundancy)
                self._input_features.setdefault(frame, []).append(x.to("cpu"))
        if hook == self.hook and layer in self._feature_layers:
            x = self._grams[layer].setdefault(frame, StepGram()).add(self._frame_tokens(tensor, frame).detach())
            kept = x if self.mode == "full" else x[self._token_index.to(x.device)]
            self._features[layer].setdefault(frame, []).append(kept.to("cpu"))
        if layer in self._text_layers and hook in ("hook_resid_pre", *CROSS_ATTENTION_HOOKS):
            self._text_update(layer, hook, self._frame_tokens(tensor, frame).detach().float(), frame)
        if hook == "attn.hook_k":
            keys = tensor.detach()[0]
            if self._roles[layer] == "frame-local":  # the frame's own keys: all a frame-diagonal block reads
                keys = keys[-self.layout.tokens_per_frame:]
            self._key_cells(layer, frame, keys.shape[0])  # refuse a key count the layout does not give, here
            self._pending.append((layer, frame, self._frame_tokens(self._query[layer], frame), keys))
            self._pending_elements += keys.numel()
            if self._pending_elements > PENDING_BUDGET:
                self._flush()

    def _text_update(self, layer: int, hook: str, tokens: torch.Tensor, frame: int) -> None:
        """The text's share of a block's attention update on a frame: ||cross|| / (||self|| + ||cross||), the
        Frobenius norms over the frame's tokens of the cross-attention's output and of the self-attention's gated
        update (the stream after it, `hook_resid_mid`, less the block's input)."""
        key = (layer, frame)
        if hook == "hook_resid_pre":
            self._update[key] = tokens
        elif hook == "hook_resid_mid":
            self._update[key] = tokens - self._update.pop(key)
        else:
            own, text = self._update.pop(key).norm(), tokens.norm()
            share = (text / (own + text)).cpu() if float(own + text) > 0 else torch.tensor(0.0)
            self._text[layer].setdefault(frame, []).append(share)

    def _key_cells(self, layer: int, frame: int, keys: int) -> tuple[torch.Tensor, int]:
        """The cell (frame x band) of each of the `keys` keys a query of `frame` sees at `layer`, and the cell count."""
        role = self._roles[layer]
        if (role, frame, keys) not in self._cells:
            try:
                key_frames = self.layout.key_frames(layer, frame, keys, self._policy)
            except LayoutError as e:
                raise ProbeError(str(e)) from None
            n, g = self.layout.tokens_per_frame, self._bands
            cells = (int(key_frames.max()) + 1) * g  # up to the last frame the queries may see: their chunk's end
            self._cells[(role, frame, keys)] = (key_frames * g + self.band_of_token[torch.arange(keys) % n], cells)
        return self._cells[(role, frame, keys)]

    def _flush(self) -> None:
        """Compute the attention of the (layer, frame) pairs held since the last flush: one batch of kernels for
        all layers whose queries see the same keys (per layer they are too small to pay their dispatch)."""
        pending, self._pending, self._pending_elements = self._pending, [], 0
        groups: dict[tuple[str, int, int], list] = {}
        for layer, frame, query, keys in pending:
            groups.setdefault((self._roles[layer], frame, keys.shape[0]), []).append((layer, query, keys))
        for (_, frame, count), members in groups.items():
            key_cells, cells = self._key_cells(members[0][0], frame, count)
            by_frame, maps = _attention_of_group([q for _, q, _ in members], [k for _, _, k in members], key_cells,
                                                 cells, self.band_of_token, self._band_share)
            for i, (layer, _, _) in enumerate(members):
                self._mass[layer].setdefault(frame, []).append(by_frame[i])
                self._map[layer].setdefault(frame, []).append(maps[i])

    def __enter__(self) -> Probe:
        if self._stack is not None:
            raise ProbeError("this Probe is already in use; make a new one for another recording")
        self._reset()
        targets = []
        for layer in self._probed:
            if "features" in self.capture:
                targets.append((layer, self.hook))
            if "attention" in self.capture:
                targets += [(layer, "attn.hook_q"), (layer, "attn.hook_k")]
        if self.input_layer is not None and (self.input_layer, "hook_resid_pre") not in targets:
            targets.append((self.input_layer, "hook_resid_pre"))
        for layer in sorted(self._text_layers):
            targets += [(layer, h) for h in ("hook_resid_pre", *CROSS_ATTENTION_HOOKS) if (layer, h) not in targets]
        stack = ExitStack()
        try:
            stack.callback(observe_sampling(self.model, self).remove)
            stack.enter_context(get_backend(self.backend)(self.model, self.layout, targets, self._receive, self._active))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        self.current = None
        try:
            if exc[0] is None:
                self._flush()
        finally:
            self._pending, self._query = [], {}
            stack.close()

    # -- the live recording ----------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        """The probed block indices, in the order given."""
        return list(self._probed)

    @property
    def manifest(self) -> dict:
        """What a run directory's manifest.json of this recording holds (but its files' digests and versions)."""
        self._recorded()
        return self._manifest

    @manifest.setter
    def manifest(self, value: dict) -> None:
        self._manifest = value

    def __repr__(self) -> str:
        state = "recording" if self._stack is not None else "recorded" if self._video is not None else "not yet used"
        return f"<Probe {self.model.name} layers {self._probed} ({state})>"

    def _recorded(self):
        """The recording, built from the buffers on first read after the `with` block (its manifest and ground truth
        again after `annotate`); a ProbeError while there is nothing to read."""
        if self._stack is not None:
            raise ProbeError("the Probe is still recording: read its results after the `with Probe(...)` block")
        if self._video is None or not self._timesteps:
            raise ProbeError("nothing was recorded: call generate inside the `with Probe(...)` block")
        if self._source is None:
            if self._built is None:
                self._built = self._entries()
            features, attention, generated, shown = self._built
            ground_truth, info = self._info
            truth = _frames_uint8(ground_truth) if ground_truth is not None else \
                np.zeros((0, *generated.shape[1:]), np.uint8)
            self._manifest = self._manifest_of(shown, ground_truth is not None, info)
            self._source = memory_source(self._manifest, features, attention, generated, truth)
        return self._source

    def annotate(self, ground_truth: torch.Tensor | None = None, **info) -> None:
        """The clip's `ground_truth` frames [T, C, H, W] and manifest entries (e.g. clip=0, seed=0) that the recording,
        and the run directory it saves, carry: JSON values under names of the caller's (the manifest's own entries,
        MANIFEST_KEYS, say what was recorded and cannot be replaced)."""
        check_manifest_entries(info)
        self._info, self._source = (ground_truth, info), None

    def _frames_in_order(self) -> list[int]:
        return sorted(self._timesteps)

    def _stacked(self, per_layer: dict[int, dict[int, list]], layer: int) -> list[list]:
        return [per_layer[layer][frame] for frame in self._frames_in_order()]

    def _attention_of(self, layer: int) -> torch.Tensor:
        """float32 [F, S, H, T], each frame's steps padded to the clip's T frames."""
        padded = [torch.stack([torch.nn.functional.pad(m, (0, self.num_frames - m.shape[-1])) for m in steps])
                  for steps in self._stacked(self._mass, layer)]
        return torch.stack(padded).float()

    def _map_of(self, layer: int) -> torch.Tensor:
        """float32 [F, S, H, bands, T * bands], 0 where the frame cannot look (later frames)."""
        width = self.num_frames * self._bands
        padded = [torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[-1])) for m in steps])
                  for steps in self._stacked(self._map, layer)]
        return torch.stack(padded).float()

    def _entries(self):
        """(features, attention, generated video, what the video shows): the tensors the run directory holds."""
        frames = self._frames_in_order()
        steps = [sorted(s) for s in self._timesteps.values()]
        if any(s != steps[0] for s in steps):
            raise ProbeError("probed frames recorded different steps; probe one generate call per Probe")
        features, attention = {}, {}
        for layer in self._probed:
            if "features" in self.capture:
                grams = [g.matrices() for g in self._stacked(self._grams, layer)]
                centred = [g.centred() for g in self._stacked(self._grams, layer)]
                features[f"layer{layer}"] = torch.stack([torch.stack(s) for s in self._stacked(self._features, layer)])
                features[f"layer{layer}.tokens"] = self._token_index if self.mode == "stream" else \
                    torch.arange(self.layout.tokens_per_frame)
                features[f"layer{layer}.gram"] = torch.stack([g[0] for g in grams])
                features[f"layer{layer}.token_cosine"] = torch.stack([g[1] for g in grams])
                features[f"layer{layer}.centred_cosine"] = torch.stack([c[0] for c in centred])
                features[f"layer{layer}.cka"] = torch.stack([c[1] for c in centred])
            if "attention" in self.capture:
                attention[f"layer{layer}"] = self._attention_of(layer)
                attention[f"layer{layer}.map"] = self._map_of(layer)
                if layer in self._text_layers:
                    attention[f"layer{layer}.text_share"] = torch.stack(
                        [torch.stack(self._text[layer][frame]) for frame in frames]).float()
        attention |= derived_entries(attention, frames, self.layout.frames_per_block,
                                     (self._sampling or {}).get("sink_frames") or 0)  # by distance and region
        if self._input_grams and all(frame in self._input_grams for frame in frames):
            pairs = [self._input_grams[frame].matrices() for frame in frames]
            features["input.gram"] = torch.stack([p[0] for p in pairs])
            features["input.token_cosine"] = torch.stack([p[1] for p in pairs])
            pairs = [self._input_grams[frame].centred() for frame in frames]
            features["input.centred_cosine"] = torch.stack([p[0] for p in pairs])
            features["input.cka"] = torch.stack([p[1] for p in pairs])
            if self.mode == "full":
                features["input.features"] = torch.stack(
                    [torch.stack(self._input_features[frame]) for frame in frames]).half()
        video = self._video if self._video.dim() == 4 else self._video[0]
        shown = {}
        preview = self.model.preview(video)
        if preview is not None:  # latent frames: decoded by a VAE, or shown as three channels
            video, what = preview
            shown = {"video_frames": len(video), "video_context_frames": self.model.shown_frames(self.context),
                     "video_shows": what}
        return features, attention, _frames_uint8(video), shown

    def _manifest_of(self, shown: dict, ground_truth: bool, info: dict) -> dict:
        """What the manifest of this recording says (write_run adds its files' digests and the versions)."""
        frames = self._frames_in_order()
        first = sorted(self._timesteps[frames[0]])
        scale = self.model.guidance_scale
        layout = self.layout
        return {
            "model": self.model.name, "checkpoint": self.model.checkpoint,
            "config": self.model.get_config(), "parameters": sum(p.numel() for p in self.model.parameters()),
            "depth": layout.depth, "block_roles": [layout.role(layer) for layer in range(layout.depth)],
            "layers": list(self._probed), "layer_roles": [layout.role(layer) for layer in self._probed],
            "layer_paths": [layout.blocks[layer] for layer in self._probed],
            "hook": self.hook, "capture": list(self.capture), "mode": self.mode,
            "backend": self.backend, "tokens_per_frame": layout.tokens_per_frame, "bands": self._bands,
            "frames_per_block": layout.frames_per_block,
            "token_grid": list(layout.token_grid) if layout.token_grid else None,
            "frames": frames, "context": self.context, "num_frames": self.num_frames,
            "steps": first, "timesteps": [self._timesteps[frames[0]][s] for s in first],
            "ground_truth": ground_truth, "input_layer": self.input_layer,
            "guidance": {"scale": scale, "recorded_pass": self.guidance_pass if scale != 1.0 else "cond (no guidance)"},
            "sampling": self._sampling or {}, **shown, **info,
        }

    def save(self, path: str | Path, *, ground_truth: torch.Tensor | None = None, force: bool = False,
             **info) -> Path:
        """Write the run directory (docs/run-directory.md): the recording, with the clip's `ground_truth` frames
        [T, C, H, W] and `info` (e.g. clip=0, seed=0) in the manifest, which the live recording then holds too."""
        if self._video is None or not self._timesteps:
            raise ProbeError("nothing to save: call generate inside the `with Probe(...)` block first")
        if ground_truth is not None or info:
            self.annotate(ground_truth, **info)
        self._recorded()
        return Recording.save(self, path, force=force)
