"""Errors a user can act on: each message is one line naming the field, file or value and the fix."""


class ConfigError(ValueError):
    """A configuration field, input file or path is missing, unknown, mistyped or out of range."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class MemoryEstimateError(MemoryError):
    """A computation's estimated peak exceeds the memory available; the message says what to change."""
