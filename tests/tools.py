"""The command-line tools some tests drive (promtool, the compose tools, shellcheck): found, or
the test skipped on a machine without them. Under CI, where scripts/test installs them all, a
missing one fails instead: a skip there would hide a broken install step."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def missing_tool(reason: str) -> None:
    """Skip for `reason`, or fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: scripts/test installs it", pytrace=False)
    pytest.skip(reason)


def required_tool(name: str, installed_by: str, *candidates: str | Path | None) -> str:
    """The first executable of `candidates`, then `name` on PATH; else missing_tool."""
    for candidate in (*candidates, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    missing_tool(f"{name} is not installed ({installed_by})")
    raise AssertionError("unreachable")  # missing_tool skips or fails
