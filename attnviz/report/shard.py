"""Parsing ``--shard K/N``; light (no torch), so that a bad value is answered at once."""

from __future__ import annotations

import re

from attnviz.runtime.errors import UsageError

__all__ = ["parse_shard"]


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"K/N"`` with 1 <= K <= N.

    Raises:
        UsageError: Anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UsageError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
    return int(match[1]), int(match[2])
