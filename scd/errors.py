"""The refusals of the models themselves (a config or an input they cannot take) and of the benchmark; the other
refusals of `scd` live beside what they guard (SamplingError in sampling, ...), but CheckpointError, which the loaders
of every family raise. Each is a
ValueError subclass whose message is one line naming the accepted values."""


class ModelError(ValueError):
    """A model configuration or a model input that the model cannot take."""


class BenchmarkError(ValueError):
    """A benchmark split, scene, clip or size that the procedural benchmark does not have."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line naming the problem."""
