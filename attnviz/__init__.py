"""attnviz: see what the SE and CBAM attention in a CNN learned.

The public API, imported lazily so that ``import attnviz`` stays light::

    import attnviz
    loaded = attnviz.load_model("cbam_cnn.pth")
    cap = attnviz.capture(loaded.model, images, class_names=loaded.class_names)
    cam = attnviz.gradcam(loaded.model, images)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_model": "attnviz.checkpoints",
    "save_checkpoint": "attnviz.checkpoints",
    "LoadedModel": "attnviz.checkpoints",
    "capture": "attnviz.capturing",
    "Capture": "attnviz.capturing",
    "Capturer": "attnviz.capturing",
    "Gate": "attnviz.capturing",
    "gradcam": "attnviz.cam",
    "CamResult": "attnviz.cam",
    "load_input": "attnviz.inputs",
    "load_rgb": "attnviz.inputs",
    "preprocess": "attnviz.inputs",
    "get_preset": "attnviz.inputs",
    "build_model": "attnviz.models",
    "list_architectures": "attnviz.models",
    "run_maps": "attnviz.maps",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.cam import CamResult, gradcam
    from attnviz.capturing import Capture, Capturer, Gate, capture
    from attnviz.checkpoints import LoadedModel, load_model, save_checkpoint
    from attnviz.inputs import get_preset, load_input, load_rgb, preprocess
    from attnviz.maps import run_maps
    from attnviz.models import build_model, list_architectures


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
