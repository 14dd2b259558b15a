"""attnviz: see what the SE and CBAM attention in a CNN learned.

The public API, imported lazily so that ``import attnviz`` stays light::

    import attnviz
    loaded = attnviz.load_model("cbam_cnn.pth")
    cap = attnviz.capture(loaded.model, images, class_names=loaded.class_names)
    cam = attnviz.gradcam(loaded.model, images)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz.runtime.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_model": "attnviz.io.checkpoints",
    "save_checkpoint": "attnviz.io.save",
    "LoadedModel": "attnviz.io.checkpoints",
    "capture": "attnviz.capturing.capturer",
    "Capture": "attnviz.capturing.capturer",
    "Capturer": "attnviz.capturing.capturer",
    "Gate": "attnviz.capturing.capturer",
    "gradcam": "attnviz.explain.cam",
    "CamResult": "attnviz.explain.cam",
    "load_input": "attnviz.io.inputs",
    "load_rgb": "attnviz.io.inputs",
    "preprocess": "attnviz.io.inputs",
    "get_preset": "attnviz.io.inputs",
    "build_model": "attnviz.models",
    "list_architectures": "attnviz.models",
    "run_maps": "attnviz.jobs.maps",
    "compare": "attnviz.jobs.compare",
    "Comparison": "attnviz.jobs.compare",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.capturing.capturer import Capture, Capturer, Gate, capture
    from attnviz.explain.cam import CamResult, gradcam
    from attnviz.io.checkpoints import LoadedModel, load_model
    from attnviz.io.inputs import get_preset, load_input, load_rgb, preprocess
    from attnviz.io.save import save_checkpoint
    from attnviz.jobs.compare import Comparison, compare
    from attnviz.jobs.maps import run_maps
    from attnviz.models import build_model, list_architectures


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
