"""Typed errors. The CLI turns them into one-line messages and exit codes, never tracebacks."""


class SfedgeError(Exception):
    """Bad input a user can act on (missing file, wrong flag, refused overwrite): exit code 2."""

    exit_code = 2


class ManifestError(SfedgeError):
    """An engines directory whose manifest is missing, malformed, or whose files do not match it."""


class ValidationError(SfedgeError):
    """An exported graph disagrees with the PyTorch reference beyond its tolerance: exit code 1."""

    exit_code = 1
