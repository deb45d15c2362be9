"""A causal Wan / SkyReels-V2 model from a local diffusers directory, with what its pipeline directory holds:
the transformer, the VAE, the umT5 text encoder and tokenizer, the scheduler. Local files only, never the network.

    model = load_causal_wan("SkyReels-V2-DF-1.3B-540P-Diffusers", latent_size=(60, 104), frames_per_block=3)
    model.text_embeddings = encode_prompt(model, "a red car drives along a coast road")

A pipeline directory has `transformer/` and, optionally, `vae/`, `text_encoder/` + `tokenizer/` and
`scheduler/`; a transformer directory alone (`config.json` + `.safetensors`) works too, with zero text
embeddings and latents shown by their first three channels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from scd.devices import Placement, placed
from scd.errors import CheckpointError
from scd.files import input_path, sha256
from scd.wan.causal_wan import TEXT_TOKENS, CausalWan, check_embeddings
from scd.wan.checks import (
    check_finite,
    check_pipeline,
    check_scheduler_config,
    check_weights,
    read_transformer_config,
)
from scd.wan.vae import encode_video, vae_factors

SCHEDULERS = ("auto", "euler", "pipeline")  # auto: the pipeline's own where the directory has one, else euler
PIPELINE_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def scheduler_config(root: Path, choice: str = "auto") -> dict | None:
    """The pipeline's scheduler config (`scheduler/scheduler_config.json`) when `choice` takes it, else None (the
    flow-matching Euler scheduler of `generate`)."""
    root = input_path(root, "root", "a pipeline directory", CheckpointError)
    if choice not in SCHEDULERS:
        raise CheckpointError(f"scheduler {choice!r}; accepted: {', '.join(SCHEDULERS)}")
    path = root / "scheduler" / "scheduler_config.json"
    if choice == "euler" or (choice == "auto" and not path.is_file()):
        return None
    if not path.is_file():
        raise CheckpointError(f"--scheduler pipeline, but {root} has no scheduler/scheduler_config.json; accepted: "
                              "--scheduler euler or auto")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not valid JSON") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is a JSON {type(config).__name__}; accepted: a scheduler config (a JSON object)")
    return check_scheduler_config(config, path, PIPELINE_SCHEDULERS)


def load_causal_wan(path: str | Path, latent_size: tuple[int, int] = (8, 8), text_embeddings: torch.Tensor | None = None,
                    *, frames_per_block: int | None = None, fps: int | None = None, scheduler: str = "auto",
                    device: str | torch.device | Placement = "cpu", dtype: torch.dtype | None = None) -> CausalWan:
    """Load a local diffusers transformer directory, or a pipeline directory's `transformer/` (with its `vae/`
    and scheduler when there), with `from_pretrained` and no network access, as a `CausalWan`."""
    import diffusers

    from scd.wan.causal_wan import geometry

    path = input_path(path, "path", "a pipeline directory (transformer/...) or a transformer directory", CheckpointError)
    where = placed(device, dtype)  # before anything is read: meta and int dtypes refused (a Placement: checked already)
    device, dtype = where.device, where.dtype
    if scheduler not in SCHEDULERS:
        raise CheckpointError(f"scheduler {scheduler!r}; accepted: {', '.join(SCHEDULERS)}")
    root = Path(path)
    pipeline = (root / "transformer" / "config.json").is_file()
    directory = root / "transformer" if pipeline else root
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a diffusers model directory: no config.json; accepted: a pipeline "
                              "directory (transformer/...) or a transformer directory")
    if pipeline:
        check_pipeline(root)
    config = read_transformer_config(directory)  # every field the toolkit reads, typed and in range
    family = config["_class_name"]
    geometry(config, latent_size, frames_per_block, fps)  # the latent grid, chunk and fps, before loading
    check_embeddings(text_embeddings, config.get("text_dim", 4096), "text_embeddings")
    check_weights(directory, config)  # every weight present, none extra, float: never a randomly initialised one
    # The pipeline's scheduler config, read and checked once: sampled with unless --scheduler euler, whose Euler
    # steps still take its flow shift.
    shipped = scheduler_config(root, "pipeline") if scheduler == "pipeline" or \
        (root / "scheduler" / "scheduler_config.json").is_file() else None
    schedule = None if scheduler == "euler" else shipped
    try:
        transformer = getattr(diffusers, family).from_pretrained(directory, local_files_only=True, torch_dtype=dtype,
                                                                 use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for a damaged directory: one line each
        raise CheckpointError(f"cannot load {directory}: {_first_line(e)}") from None
    check_finite(transformer, directory)
    vae = None
    if pipeline and (root / "vae" / "config.json").is_file():
        try:
            vae = diffusers.AutoencoderKLWan.from_pretrained(root / "vae", local_files_only=True, use_safetensors=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"cannot load the VAE in {root / 'vae'}: {_first_line(e)}") from None
        check_finite(vae, root / "vae")
        vae.eval()
    flow_shift = float(shipped.get("flow_shift") or shipped.get("shift") or 1.0) if shipped is not None else 1.0
    if schedule is not None:
        source = f"the pipeline's scheduler/ ({schedule['_class_name']})"
    elif shipped is not None:
        source = f"--scheduler euler, at the flow shift of the pipeline's {shipped['_class_name']}"
    else:
        source = f"no scheduler/ in {root}: the flow-matching Euler scheduler at shift 1"
    model = CausalWan(transformer, latent_size, text_embeddings, frames_per_block=frames_per_block, fps=fps,
                      name=f"diffusers:{path}", flow_shift=flow_shift)
    model.vae, model.scheduler_config, model.pipeline_dir = vae, schedule, root if pipeline else None
    model.scheduler_info = {"class": schedule["_class_name"] if schedule else "FlowMatchEulerDiscreteScheduler",
                            "shift": flow_shift, "source": source}
    files = {p.name: sha256(p) for p in sorted(directory.glob("*.safetensors"))}
    combined = next(iter(files.values())) if len(files) == 1 else \
        hashlib.sha256("".join(files.values()).encode()).hexdigest()  # shards: the hash of their hashes, in name order
    model.checkpoint |= {"sha256": combined, "weight_files": files}
    return model.to(device=device, dtype=dtype).eval()


def encode_prompt(model: CausalWan, prompt: str) -> torch.Tensor:
    """umT5 embeddings [512, text_dim] of `prompt`, from the pipeline directory's own `text_encoder/` and
    `tokenizer/` (transformers, local files only), padded as Wan's pipelines pad them: zeros after the prompt."""
    if not isinstance(model, CausalWan):
        raise CheckpointError(f"model is a {type(model).__name__}; accepted: a CausalWan (load_causal_wan)")
    if not isinstance(prompt, str) or len(prompt) > 100_000:
        raise CheckpointError(f"prompt {str(prompt)[:40]!r}... is not accepted; accepted: a string of at most 100000 "
                              "characters (the empty prompt included)")
    from transformers import AutoTokenizer, UMT5EncoderModel

    root = model.pipeline_dir
    if root is None or not (root / "text_encoder").is_dir() or not (root / "tokenizer").is_dir():
        raise CheckpointError(f"a prompt needs the pipeline directory's text_encoder/ and tokenizer/; "
                              f"{model.checkpoint['name']} has none; accepted: --text-embeddings FILE, or a pipeline "
                              "directory with them")
    try:
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", local_files_only=True, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a damaged directory: one line each
        raise CheckpointError(f"cannot load the text encoder in {root}: {_first_line(e)}") from None
    check_finite(encoder, root / "text_encoder")
    if encoder.config.d_model != model.transformer.config.text_dim:
        raise CheckpointError(f"the text encoder in {root} gives {encoder.config.d_model}-wide embeddings; the transformer "
                              f"reads text_dim = {model.transformer.config.text_dim}")
    tokens = tokenizer([prompt], padding="max_length", max_length=TEXT_TOKENS, truncation=True, add_special_tokens=True,
                       return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.eval()(tokens.input_ids, tokens.attention_mask).last_hidden_state[0].float()
    length = int(tokens.attention_mask.sum())
    hidden[length:] = 0  # Wan's pipelines keep the prompt's tokens and zero the padding
    return hidden


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_FRAME_PIXELS = 8192 * 8192  # a context frame larger than this is refused (a decompression bomb), before decoding


class ContextVideoError(ValueError):
    """A context video or folder of frames that cannot give the frames asked for; one line, the accepted input."""


def _image(path: Path):
    """One decoded RGB frame, refused in one line if it is not an image, is damaged, or is larger than
    MAX_FRAME_PIXELS (checked from the header, before decoding)."""
    import warnings

    from PIL import Image

    if not path.is_file():
        raise ContextVideoError(f"{path} is not a file; accepted: a folder of image files ({', '.join(IMAGE_SUFFIXES)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_FRAME_PIXELS:
                    raise ContextVideoError(f"{path} is {width}x{height} pixels; accepted: frames of at most "
                                            f"{MAX_FRAME_PIXELS} pixels (8192 x 8192)")
                return image.convert("RGB")
    except ContextVideoError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ContextVideoError(f"{path} is larger than PIL decodes safely (a decompression bomb?); accepted: frames of at "
                                f"most {MAX_FRAME_PIXELS} pixels (8192 x 8192)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ContextVideoError(f"{path} cannot be decoded as an image ({_first_line(e)}); accepted: readable "
                                f"{', '.join(IMAGE_SUFFIXES)} files") from None


def read_video(path: str | Path, frames: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `frames` frames of a video file (through PyAV) or of a folder of images (sorted by name), resized
    to `size` (H, W) with bicubic filtering: float [frames, 3, H, W] in [-1, 1].

    Every frame must decode, be at most MAX_FRAME_PIXELS, and have the size of the first (the policy: frames of one
    size, each resized to the model's; frames of mixed sizes are refused, not stretched each its own way)."""
    import numpy as np
    from PIL import Image

    path = input_path(path, "context video", "a video file or a folder of images", ContextVideoError)
    if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= 100_000:
        raise ContextVideoError(f"frames = {frames!r}; accepted: an integer in 1..100000")
    if not isinstance(size, tuple | list) or len(size) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16384 for v in size):
        raise ContextVideoError(f"size = {size!r}; accepted: two integers (height, width) in 1..16384")
    path = Path(path)
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not entries:
            raise ContextVideoError(f"{path} holds no images; accepted: {', '.join(IMAGE_SUFFIXES)} files, or a video file")
        if len(entries) < frames:
            raise ContextVideoError(f"{path} has {len(entries)} frames; the context needs {frames}")
        images = [_image(p) for p in entries[:frames]]
        names = [p.name for p in entries[:frames]]
    elif path.is_file():
        import av

        images = []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                if stream.width * stream.height > MAX_FRAME_PIXELS:
                    raise ContextVideoError(f"{path} is {stream.width}x{stream.height} pixels; accepted: frames of at "
                                            f"most {MAX_FRAME_PIXELS} pixels (8192 x 8192)")
                for frame in container.decode(video=0):
                    images.append(frame.to_image().convert("RGB"))
                    if len(images) == frames:
                        break
        except ContextVideoError:
            raise
        except (av.error.FFmpegError, ValueError, IndexError, OSError) as e:
            raise ContextVideoError(f"cannot read {path} as a video: {_first_line(e)}") from None
        names = [f"frame {i}" for i in range(len(images))]
    else:
        raise ContextVideoError(f"{path} does not exist; accepted: a video file or a folder of images")
    if len(images) < frames:
        raise ContextVideoError(f"{path} has {len(images)} frames; the context needs {frames}")
    odd = next((i for i, im in enumerate(images) if im.size != images[0].size), None)
    if odd is not None:
        (w0, h0), (w1, h1) = images[0].size, images[odd].size
        raise ContextVideoError(f"{path}: {names[odd]} is {w1}x{h1} but {names[0]} is {w0}x{h0}; accepted: frames of one "
                                "size (each is then resized to the model's)")
    h, w = size
    pixels = [np.asarray(im if im.size == (w, h) else im.resize((w, h), Image.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1


def context_from_video(model: CausalWan, path: str | Path, latent_frames: int) -> torch.Tensor:
    """Latent context frames [latent_frames, C, h, w] of a video, resized to the model's resolution and encoded
    with the pipeline directory's VAE (1 + temporal x (latent_frames - 1) pixel frames are read)."""
    if not isinstance(model, CausalWan):
        raise CheckpointError(f"model is a {type(model).__name__}; accepted: a CausalWan (load_causal_wan)")
    if not isinstance(latent_frames, int) or isinstance(latent_frames, bool) or not 1 <= latent_frames <= 1024:
        raise ContextVideoError(f"latent_frames = {latent_frames!r}; accepted: an integer in 1..1024")
    vae = model.vae
    if vae is None:
        raise CheckpointError(f"a context video needs the pipeline directory's vae/; {model.checkpoint['name']} has none")
    temporal, spatial = vae_factors(vae)
    h, w = model.latent_size
    video = read_video(path, 1 + temporal * (latent_frames - 1), (h * spatial, w * spatial))
    return encode_video(vae, video)
