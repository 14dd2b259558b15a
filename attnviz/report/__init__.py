"""attnviz.report: batch reports over many images and several models, as a static HTML page.

Usage::

    from attnviz.io.checkpoints import load_model
    from attnviz.report import ReportOptions, run_report

    models = {"cnn": load_model("cnn.pth"), "cbam_cnn": load_model("cbam.pth")}  # baseline first
    result = run_report(models, "shapes:200", "runs/report", ReportOptions(workers=2))
    result.index    # runs/report/index.html (opens from disk, no server)

``DIR/results.csv`` has one row per image, ``DIR/summary.csv`` the aggregates and
``DIR/results.json`` both. Re-running the same call resumes; ``ReportOptions(shard=(k, n))`` and
:func:`merge_reports` split one report over several processes or machines. Modules:
``sources`` (inputs, labels, masks), ``analysis`` and ``measures`` (models and metrics per batch),
``pictures`` (per-image pictures from arrays), ``records`` (per-image records, atomic files),
``runner`` (streaming, resume, shards), ``aggregate``, ``build``, ``results`` and ``html``
(outputs rebuilt from the records), ``merge``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz.runtime.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "run_report": "attnviz.report.runner",
    "ReportOptions": "attnviz.report.runner",
    "ReportResult": "attnviz.report.runner",
    "name_models": "attnviz.report.runner",
    "build_report": "attnviz.report.build",
    "BuildResult": "attnviz.report.build",
    "merge_reports": "attnviz.report.merge",
    "resolve_source": "attnviz.report.sources",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.report.build import BuildResult, build_report
    from attnviz.report.merge import merge_reports
    from attnviz.report.runner import (
        ReportOptions,
        ReportResult,
        name_models,
        run_report,
    )
    from attnviz.report.sources import resolve_source


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
