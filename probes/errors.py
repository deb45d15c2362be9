"""The refusal of the probes package (kept apart so that every module of it can raise it without a cycle)."""


class ProbeError(ValueError):
    """A probe that cannot be set up or saved as asked; the message names the accepted values."""
