"""The job's one input-error family: what the person running it can fix.

Every bad input (config, data files, flags) and every missing upstream table raises an
InputError whose message names the fix; the CLI prints it and exits 2 with no traceback.
Anything else is a bug and keeps its traceback, a FileNotFoundError deep in a library
included.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the key, file or flag and what to do instead."""


class MissingTableError(InputError):
    """A table the stage reads is missing or empty; the message names the stage to run first."""


class ClusterError(RuntimeError):
    """The cluster cannot run a stage (a node it needs was lost and none replaces it): the
    CLI prints the message and exits 1 with no traceback; a rerun resumes."""
