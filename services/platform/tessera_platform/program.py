"""How a tessera program names itself: in usage lines, and by version.

The version is the installed distribution's (``importlib.metadata``), the one
``pyproject.toml`` declares: ``/healthz`` and ``--version`` report it, so an
operator learns what runs without reading an image tag.
"""

from __future__ import annotations

import sys
from functools import cache
from importlib.metadata import version
from pathlib import Path

__all__ = ["distribution_version", "usage_name"]


def usage_name(module: str) -> str:
    """How this process was called, for usage lines: the console script's name
    (``tessera-auth``), or ``python -m <module>`` (where argparse would say ``__main__.py``)."""
    name = Path(sys.argv[0]).name
    return f"python -m {module}" if name in ("__main__.py", "-c", "") else name


@cache
def distribution_version(distribution: str) -> str:
    """The installed version of ``distribution`` (e.g. ``tessera-auth``)."""
    return version(distribution)
