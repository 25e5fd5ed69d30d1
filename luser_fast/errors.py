"""Errors that are the user's to fix, not bugs.

``UserError`` marks a problem with what the user supplied or with the machine: arguments,
files (checkpoints, data), a device that is not there, a training run that diverged, a
disk that is full. ``luser-fast`` (``luser_fast.cli.main``) prints such an error as one
``luser-fast <command>: error: <message>`` line and exits with status 2, as it does for
``ValueError`` (the argument-validation contract of ``luser_fast.core.validate``) and
``OSError`` (files that cannot be read or written); any other exception is a bug and keeps
its traceback.

Each subclass also derives from the built-in exception a caller would expect, so code
that catches ``ValueError`` or ``RuntimeError`` keeps working.
"""
from __future__ import annotations

__all__ = ["UserError", "CheckpointError", "DeviceUnavailableError", "TrainingDivergedError"]


class UserError(Exception):
    """A problem with the user's input or machine (see the module docstring)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: unreadable, refused by weights-only loading,
    altered (digest mismatch), incomplete, inconsistent (a step outside its run), or whose
    weights do not fit the model its configuration describes. The message names the file."""


class DeviceUnavailableError(UserError, RuntimeError):
    """The requested device (e.g. ``--device cuda``) is not available on this machine."""


class TrainingDivergedError(UserError, RuntimeError):
    """The training loss or the weights turned non-finite; the run stopped and the last
    good checkpoint was kept (no checkpoint with non-finite weights is ever written)."""
