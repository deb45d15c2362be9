"""The models under study: the baseline causal video diffuser, its sampler, training and checkpoints."""

from scd.baseline import BASELINE_SIZES, BaselineConfig, CausalVideoDiffuser
from scd.data import VideoBenchmark
from scd.sampling import generate
from scd.zoo import CheckpointError, load_model, save_model

__all__ = [
    "BASELINE_SIZES", "BaselineConfig", "CausalVideoDiffuser", "CheckpointError", "VideoBenchmark",
    "generate", "load_model", "save_model",
]
