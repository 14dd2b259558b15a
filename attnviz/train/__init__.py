"""attnviz.train: the course's training recipes and the generated ``shapes`` data set.

::

    from attnviz.train import fit, ShapesDataset
    result = fit("cbam_cnn", "shapes", epochs=10, out="cbam_shapes.pth")

Names are imported lazily, so ``import attnviz.train`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "fit": "attnviz.train.trainer",
    "FitResult": "attnviz.train.trainer",
    "checkpoint_paths": "attnviz.train.trainer",
    "make_datasets": "attnviz.train.data",
    "train_transform": "attnviz.train.data",
    "eval_transform": "attnviz.train.data",
    "ShapesDataset": "attnviz.train.shapes",
    "ShapeSample": "attnviz.train.shapes",
    "make_sample": "attnviz.train.shapes",
    "SHAPES_CLASSES": "attnviz.train.shapes",
    "stage_for_epoch": "attnviz.train.recipes",
    "stage_param_groups": "attnviz.train.recipes",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.train.data import eval_transform, make_datasets, train_transform
    from attnviz.train.recipes import stage_for_epoch, stage_param_groups
    from attnviz.train.shapes import SHAPES_CLASSES, ShapeSample, ShapesDataset, make_sample
    from attnviz.train.trainer import FitResult, checkpoint_paths, fit


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
