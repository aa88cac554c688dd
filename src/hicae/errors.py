"""User-facing errors: the CLI prints these without a traceback and exits non-zero."""


class HicaeError(Exception):
    """Base class of errors caused by the user's input, files or settings."""


class ConfigError(HicaeError, ValueError):
    """An invalid setting."""


class DataError(HicaeError, ValueError):
    """Bad input data: malformed JSONL, a missing field, an empty or over-long text."""


class CheckpointError(HicaeError, ValueError):
    """A checkpoint or memory file that does not fit the model it is loaded into."""


class OutputError(HicaeError, OSError):
    """An output that cannot be written: a read-only folder, a full disk, a file where a folder should be."""
