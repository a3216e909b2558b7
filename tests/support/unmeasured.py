"""An environment for a child process that coverage must not measure.

``make check`` measures the Python processes the tests start too (coverage's
``patch = subprocess``: a ``.pth`` file that starts coverage in any
interpreter whose environment holds ``COVERAGE_PROCESS_CONFIG``). Measuring
changes a process: coverage imports modules of its own, registers an
``atexit`` handler and writes a data file in the current directory. A test
about exactly those things (what a process imports, how it exits, where it
writes) runs its child without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def unmeasured(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without the variables that start coverage."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in COVERAGE_VARIABLES}
