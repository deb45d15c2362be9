"""The refusal of the analyses (a measure asked of a recording that cannot give it); one line, the accepted values."""


class AnalysisError(ValueError):
    """A measure, figure or table asked of a recording, or with arguments, that it cannot be computed from."""
