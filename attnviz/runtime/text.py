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
    if _plain(value):
        try:
            return json.dumps(value, **options)
        except ValueError:  # NaN or infinity: cleaned first
            pass
    return json.dumps(finite(value), **options)


def _plain(value: Any) -> bool:
    """True when ``value`` is made of exact dicts with string keys, lists, tuples, strings, ints, floats,
    booleans and ``None`` only, nested at most :data:`_PLAIN_DEPTH` deep: what the json module writes as
    :func:`finite` would leave it (NaN aside). Subclasses (enums, ``OrderedDict``, numpy scalars) and
    deeper values take the cleaning path."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind not in _CONTAINERS:
            if kind not in _SCALARS:
                return False
            continue
        if depth >= _PLAIN_DEPTH:
            return False
        if kind is dict:
            if not _STRINGS.issuperset(map(type, item)):
                return False
            item = item.values()
        kinds = set(map(type, item))  # a list of numbers is looked at in C only
        if not _PLAIN_TYPES.issuperset(kinds):
            return False
        if not _CONTAINERS.isdisjoint(kinds):
            stack.extend((child, depth + 1) for child in item if type(child) in _CONTAINERS)
    return True


_PLAIN_DEPTH = 64
_STRINGS = frozenset({str})
_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})
_PLAIN_TYPES = _SCALARS | _CONTAINERS


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
