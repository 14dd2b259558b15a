"""attnviz: see what SE/CBAM attention in a CNN learned."""

from __future__ import annotations

__version__ = "0.1.0"
