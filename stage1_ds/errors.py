"""Errors a user can act on. The CLI prints their message without a traceback."""


class Stage1Error(Exception):
    """Base class of every error that names bad input and what was expected."""


class DataError(Stage1Error):
    """Raw or prepared data is missing, malformed or inconsistent."""


class ConfigError(Stage1Error):
    """A config file or override has unknown keys or invalid values."""


class CheckpointError(Stage1Error):
    """A checkpoint or export folder is missing, incomplete or from another model."""
