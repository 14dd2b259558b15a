"""The names of the course's architectures, their presets and one-line descriptions.

Light on purpose: nothing here imports torch, so ``attnviz inspect --list`` prints the names
without loading it. :mod:`attnviz.models.registry` builds its specs from these entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from attnviz.runtime.errors import ArchitectureError, did_you_mean

__all__ = ["CATALOG", "CatalogEntry", "catalog_entries", "catalog_entry"]


@dataclass(frozen=True)
class CatalogEntry:
    """One architecture as ``inspect --list`` shows it.

    Attributes:
        name: Registry name.
        preset: Name of the preprocessing preset the notebook trains with.
        description: Where the architecture comes from, one line.
    """

    name: str
    preset: str
    description: str


CATALOG: Mapping[str, CatalogEntry] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            CatalogEntry("cnn", "cifar10", "baseline 3-block CIFAR-10 CNN (seed 000)"),
            CatalogEntry("se_cnn", "cifar10", "3-block CNN with SE ChannelAttention ca1..ca3 (seed 000)"),
            CatalogEntry(
                "cbam_cnn", "cifar10", "3-block CNN with CBAM cbam1..cbam3 after each pooled block (seed 001)"
            ),
            CatalogEntry("densenet_se", "cifar10", "DenseNet-BC with an SE_Block in every dense layer (seed 002)"),
            CatalogEntry(
                "resnet18_cbam", "cifar10", "torchvision ResNet-18 for 32x32, CBAM after every stage (seed 003)"
            ),
            CatalogEntry(
                "resnet_se", "cifar10", "CustomCNN: residual blocks with SE before the shortcut add (seed 004)"
            ),
        )
    }
)


def catalog_entries() -> list[CatalogEntry]:
    """Every architecture, in the order of the course."""
    return list(CATALOG.values())


def catalog_entry(name: str) -> CatalogEntry:
    """The architecture called ``name``.

    Raises:
        ArchitectureError: Unknown name; the message lists the known ones and close matches.
    """
    try:
        return CATALOG[name]
    except (KeyError, TypeError):
        known = ", ".join(CATALOG)
        raise ArchitectureError(
            f"unknown architecture {name!r}; known: {known}{did_you_mean(str(name), CATALOG, n=2)}"
        ) from None
