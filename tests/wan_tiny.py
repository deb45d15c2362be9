"""Tiny Wan / SkyReels-V2 pipelines built from configs for the tests (diffusers' own test sizes): a transformer
(2 heads x 12, in/out 4, text_dim 16, ffn 32), a Wan VAE, a umT5 encoder and a word-level tokenizer, saved with
`save_pretrained` into a pipeline directory. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, SkyReelsV2Transformer3DModel, WanTransformer3DModel

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
            freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
FAMILIES = {"wan": WanTransformer3DModel, "skyreels": SkyReelsV2Transformer3DModel}
LATENT = (8, 8)  # 4 x 4 = 16 tokens per latent frame
WORDS = "a red car drives along the coast road blue boat sails on sea at night".split()


def tiny(family: str, seed: int = 0, **overrides):
    """A tiny random transformer of a family ("wan" or "skyreels")."""
    torch.manual_seed(seed)
    return FAMILIES[family](**{**TINY, **overrides}).eval()


def tiny_vae(seed: int = 1) -> AutoencoderKLWan:
    """A tiny random Wan VAE: 2x spatial, 2x causal temporal compression, 4 latent channels."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 1.0, 2.0]).eval()


def save_text_encoder(root: Path, seed: int = 2) -> None:
    """A tiny umT5 encoder (d_model = text_dim) and a word-level tokenizer, as a pipeline's text_encoder/ and
    tokenizer/ directories."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(root / "tokenizer")
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=len(vocab), d_model=TINY["text_dim"], d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=8)
    UMT5EncoderModel(config).eval().save_pretrained(root / "text_encoder")


def save_pipeline(root: Path, family: str = "wan", *, vae: bool = True, text: bool = True,
                  scheduler: dict | None = None, **overrides) -> Path:
    """A pipeline directory: transformer/, and vae/, text_encoder/ + tokenizer/, scheduler/ as asked."""
    tiny(family, **overrides).save_pretrained(root / "transformer")
    if vae:
        tiny_vae().save_pretrained(root / "vae")
    if text:
        save_text_encoder(root)
    if scheduler is not None:
        (root / "scheduler").mkdir(parents=True)
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


def latents(frames: int = 2, seed: int = 0) -> torch.Tensor:
    """Seeded Gaussian latent frames [frames, 4, 8, 8]."""
    return torch.randn((frames, TINY["in_channels"], *LATENT), generator=torch.Generator().manual_seed(seed))
