"""Font fallback lists so that class names in any script render without missing-glyph boxes.

Nothing here changes matplotlib's global state: :func:`font_context` applies a fallback list
through ``matplotlib.rc_context`` for the duration of one figure's construction (text artists
keep the font properties they were created with) and restores the caller's settings on exit.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

# Fonts that cover CJK ideographs (and usually kana and Hangul), in order of preference.
CJK_FONT_FAMILIES: tuple[str, ...] = (
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK JP",
    "Noto Sans CJK KR",
    "Noto Sans SC",
    "Noto Sans TC",
    "Noto Sans JP",
    "Noto Sans KR",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "Source Han Sans TC",
    "Source Han Sans JP",
    "Source Han Sans K",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Arial Unicode MS",
)

# The Latin font matplotlib ships; always present, so always a safe member of the list.
BASE_FAMILY = "DejaVu Sans"

# Substrings of font file names of the families above, to notice fonts a stale font cache misses.
_CJK_FILE_HINTS = ("notosanscjk", "notoserifcjk", "sourcehan", "wqy", "simhei", "msyh", "pingfang")

# Unicode blocks of CJK scripts: radicals..CJK ideographs, Hangul, compatibility ideographs, full width.
_CJK_RANGES = (
    (0x2E80, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),
    (0x20000, 0x2FA1F),
)


def choose_families(installed: Iterable[str], preferred: Iterable[str] = ()) -> list[str]:
    """Build a font-family fallback list from the installed family names.

    Args:
        installed: Family names known to matplotlib's font manager.
        preferred: The caller's own ``font.family`` setting, kept first (e.g. ``["sans-serif"]``).

    Returns:
        ``preferred``, then DejaVu Sans, then every installed CJK family, without duplicates.
    """
    available = set(installed)
    families: list[str] = []
    for name in [*preferred, BASE_FAMILY, *(f for f in CJK_FONT_FAMILIES if f in available)]:
        if name not in families:
            families.append(name)
    return families


def installed_families() -> list[str]:
    """Return the family names matplotlib's font manager knows, sorted."""
    from matplotlib import font_manager

    return sorted({entry.name for entry in font_manager.fontManager.ttflist})


def cjk_families() -> list[str]:
    """Return the installed families that cover CJK scripts, in order of preference."""
    available = set(installed_families())
    return [name for name in CJK_FONT_FAMILIES if name in available]


def font_families() -> list[str]:
    """Return the fallback list for a new figure: the caller's ``font.family``, DejaVu Sans, CJK fonts."""
    import matplotlib

    return choose_families(installed_families(), matplotlib.rcParams["font.family"])


def needs_cjk(texts: Iterable[str]) -> bool:
    """Return True when any of the texts holds a character of a CJK script."""
    return any(_is_cjk(ch) for text in texts for ch in str(text))


@contextlib.contextmanager
def font_context(texts: Iterable[str] = ()) -> Iterator[list[str]]:
    """Apply the font fallback list while a figure is built; warn when ``texts`` cannot render.

    Args:
        texts: The user-supplied strings the figure will show (titles, class names, captions).

    Yields:
        The fallback list in effect.
    """
    import matplotlib

    families = font_families()
    if needs_cjk(texts) and not any(name in CJK_FONT_FAMILIES for name in families):
        warnings.warn(_missing_cjk_message(), UserWarning, stacklevel=3)
    with matplotlib.rc_context({"font.family": families}):
        yield families


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _missing_cjk_message() -> str:
    import matplotlib
    from matplotlib import font_manager

    on_disk = [
        path
        for path in font_manager.findSystemFonts()
        if any(hint in Path(path).name.lower() for hint in _CJK_FILE_HINTS)
    ]
    if on_disk:
        return (
            f"a CJK font is installed ({Path(on_disk[0]).name}) but matplotlib's font cache predates it; "
            f"delete fontlist-*.json in {matplotlib.get_cachedir()} so CJK class names render"
        )
    return (
        "text contains CJK characters but no CJK font is installed; install one "
        "(e.g. apt-get install fonts-noto-cjk or fonts-wqy-microhei) so they do not render as boxes"
    )
