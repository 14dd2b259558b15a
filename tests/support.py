"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

from attnviz.cli.main import cli
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[1]


def run(*args: object) -> Result:
    """Invoke the ``attnviz`` command line in this process; exceptions propagate."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
