"""The models under study: the baseline causal video diffuser, SCD, their sampler, training and checkpoints.

The names below are imported on first use (PEP 562), so that `import scd.training.config` and the
`probe` command's help need no torch.
"""

from importlib import import_module

_EXPORTS = {
    "BASELINE_SIZES": "scd.models.baseline", "BaselineConfig": "scd.models.baseline",
    "CausalVideoDiffuser": "scd.models.baseline", "VideoDiffuser": "scd.contract",
    "VideoBenchmark": "scd.data", "generate": "scd.sampling",
    "SCD_SIZES": "scd.models.scd_model", "SCDConfig": "scd.models.scd_model", "SeparableCausalDiffuser": "scd.models.scd_model",
    "CheckpointError": "scd.zoo", "load_model": "scd.zoo", "save_model": "scd.zoo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
