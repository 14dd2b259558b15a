"""What every benchmark script shares: the machine line and writing one section of docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version(package: str) -> str:
    """The installed version of ``package``, or ``not installed``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(packages: tuple[str, ...] = ("torch",)) -> str:
    """``CPU: …, N logical cores[; GPU: …]; Python …, <package> <version>, …``."""
    import torch

    parts = [f"CPU: {cpu_name()}, {os.cpu_count()} logical cores"]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    versions = ", ".join(f"{package} {version(package)}" for package in packages)
    parts.append(f"Python {platform.python_version()}, {versions}")
    return "; ".join(parts)


def write_section(section: str, body: str, doc: Path = DOC) -> None:
    """Replace the section headed ``section`` in ``doc`` (docs/BENCHMARKS.md) or append it, keeping the others."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: body.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    doc.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
