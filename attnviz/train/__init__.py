"""attnviz.train: the course's training recipes and the generated ``shapes`` data set.

::

    from attnviz.train import fit, ShapesDataset
    result = fit("cbam_cnn", "shapes", epochs=10, out="cbam_shapes.pth")

Names are imported lazily, so ``import attnviz.train`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz.runtime.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "fit": "attnviz.train.trainer",
    "FitResult": "attnviz.train.trainer",
    "checkpoint_paths": "attnviz.train.trainer",
    "TrainSettings": "attnviz.train.settings",
    "make_datasets": "attnviz.data.specs",
    "train_transform": "attnviz.data.specs",
    "eval_transform": "attnviz.data.specs",
    "ShapesDataset": "attnviz.data.shapes",
    "ShapeSample": "attnviz.data.shapes",
    "make_sample": "attnviz.data.shapes",
    "SHAPES_CLASSES": "attnviz.data.shapes",
    "stage_for_epoch": "attnviz.train.recipes",
    "stage_param_groups": "attnviz.train.recipes",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.data.shapes import (
        SHAPES_CLASSES,
        ShapeSample,
        ShapesDataset,
        make_sample,
    )
    from attnviz.data.specs import eval_transform, make_datasets, train_transform
    from attnviz.train.recipes import stage_for_epoch, stage_param_groups
    from attnviz.train.settings import TrainSettings
    from attnviz.train.trainer import FitResult, checkpoint_paths, fit


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
