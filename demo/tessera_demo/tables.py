"""The plain-text tables the demo prints (``make demo``): columns padded to their widest
cell, the last one (free text, e.g. "NO: ...") left as it is."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["align_columns"]


def align_columns(lines: Sequence[Sequence[str]]) -> str:
    """``lines`` (the header first) as text: every column but the last padded to its
    widest cell, two spaces between columns."""
    columns = len(lines[0]) - 1
    widths = [max(len(line[i]) for line in lines) for i in range(columns)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in lines
    )
