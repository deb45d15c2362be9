"""The models under study: the baseline causal video diffuser, SCD, their sampler, training and checkpoints."""

from scd.baseline import BASELINE_SIZES, BaselineConfig, CausalVideoDiffuser
from scd.data import VideoBenchmark
from scd.sampling import generate
from scd.scd_model import SCD_SIZES, SCDConfig, SeparableCausalDiffuser
from scd.zoo import CheckpointError, load_model, save_model

__all__ = [
    "BASELINE_SIZES", "BaselineConfig", "CausalVideoDiffuser", "CheckpointError", "VideoBenchmark",
    "SCDConfig", "SCD_SIZES", "SeparableCausalDiffuser", "generate", "load_model", "save_model",
]
