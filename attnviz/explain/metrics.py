"""Numbers about maps: agreement, localisation, faithfulness, sanity, gate statistics (the public face).

This module holds no logic: it re-exports the two modules that do, so that users write
``from attnviz.explain import metrics`` and ``metrics.pointing_game(...)``.

* :mod:`attnviz.explain.array_metrics`: computed from arrays alone (agreement of two maps,
  localisation against a mask, gate statistics).
* :mod:`attnviz.explain.model_metrics`: metrics that run the model (deletion/insertion,
  parameter-randomisation sanity check).

``attnviz/METRICS.md`` (shipped with the package) gives every definition with its formula and source.
"""

from __future__ import annotations

from attnviz.explain.array_metrics import (
    channel_selectivity,
    class_selectivity,
    energy_pointing_game,
    energy_pointing_game_batch,
    gate_statistics,
    localisation_batch,
    map_agreement,
    pointing_game,
    pointing_game_batch,
    spearman,
    top_fraction_mask,
    top_region_iou,
)
from attnviz.explain.model_metrics import BASELINES, deletion_insertion, randomisation_sanity

__all__ = [
    "BASELINES",
    "channel_selectivity",
    "class_selectivity",
    "deletion_insertion",
    "energy_pointing_game",
    "energy_pointing_game_batch",
    "gate_statistics",
    "localisation_batch",
    "map_agreement",
    "pointing_game",
    "pointing_game_batch",
    "randomisation_sanity",
    "spearman",
    "top_fraction_mask",
    "top_region_iou",
]
