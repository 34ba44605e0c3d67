"""Errors that users see.

Every error a user can cause (a bad file, a wrong field, a run from another model) is a
:class:`DvaError` whose message names the file, line or field at fault. The CLI prints
these on one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DvaError(Exception):
    """Base class of the errors a user can fix."""


class DataError(DvaError):
    """A dataset, annotation file or image is missing or malformed."""


class ConfigError(DvaError):
    """A configuration value is invalid or contradicts a saved run."""


class CheckpointError(DvaError):
    """A checkpoint or run directory cannot be used for what was asked."""


class MissingDependency(DvaError, ImportError):
    """An optional dependency (an extra such as ``dva[offline]``) is not installed."""


class WriteError(DvaError, OSError):
    """A file could not be written (disk full, no permission); the file it was to replace is unchanged."""
