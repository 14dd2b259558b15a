"""Capturing attention: what counts as a gate (``gates``) and the capture itself (``capturer``).

``from attnviz.capturing import capture`` works as before; names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz.runtime.lazy import lazy_exports

_EXPORTS: dict[str, str] = {name: "attnviz.capturing.capturer" for name in ("Capture", "Capturer", "Gate", "capture")}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.capturing.capturer import Capture, Capturer, Gate, capture

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
