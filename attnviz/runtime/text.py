"""Text that attnviz writes for other programs: strict JSON, spreadsheet-safe CSV cells, file names.

Light on purpose (no torch): picture workers may import it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: A text cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def finite(value: Any) -> Any:
    """``value`` as plain Python (numpy/torch scalars and arrays as lists, tuples as lists) with
    NaN and infinities replaced by ``None``."""
    if isinstance(value, dict):
        return {str(key): finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """``value`` as JSON that every parser accepts: non-finite numbers become ``null``, and
    ``allow_nan=False`` makes sure a bare ``NaN`` can never be written.

    Plain values (dicts with string keys, lists, tuples, strings, finite numbers) are encoded as
    they are, by the json module's C encoder when there is no ``indent``; anything else (NaN,
    numpy or torch values, non-string keys) goes through :func:`finite` first. Both give the same
    text for a plain value.
    """
    options = {"ensure_ascii": False, **kwargs, "allow_nan": False}
    if _plain_keys(value):
        try:
            return json.dumps(value, **options)
        except (ValueError, TypeError):  # NaN or infinity, or a value json cannot encode: cleaned first
            pass
    return json.dumps(finite(value), **options)


def _plain_keys(value: Any) -> bool:
    """True when every dict in ``value`` has string keys (which :func:`finite` would leave as they
    are; ``json`` writes ``True`` and ``None`` keys differently from ``str``)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if not _STR_ONLY.issuperset(map(type, item)):
                return False
            children = item.values()
        elif type(item) in (list, tuple):
            children = item
        else:
            continue
        if not _CONTAINERS.isdisjoint(map(type, children)):  # a list of numbers is looked at in C only
            stack.extend(child for child in children if type(child) in _CONTAINERS)
    return True


_STR_ONLY = frozenset({str})


_CONTAINERS = frozenset({dict, list, tuple})


def csv_cell(value: Any) -> Any:
    """One CSV cell: ``None`` and non-finite numbers empty, booleans 0/1, floats at full precision,
    and text that a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR)
    prefixed with ``'`` (OWASP's advice). Numbers stay numbers: ``-0.5`` is written as it is."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


_UNSAFE_IN_FILE_NAMES = re.compile(r"[^\w.-]+")


def file_slug(name: str, *, fill: str = "-", default: str = "item", max_length: int | None = None) -> str:
    """``name`` as a file name: runs of characters other than letters, digits, ``_ . -`` become ``fill``;
    no leading or trailing dots, so never ``.``, ``..`` or a hidden file; ``default`` when nothing is left."""
    slug = _UNSAFE_IN_FILE_NAMES.sub(fill, name)
    if max_length is not None:
        slug = slug[:max_length]
    return slug.strip(".") or default
