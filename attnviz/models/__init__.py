"""The course's architectures, with parameter names exactly as the notebooks write them.

A ``state_dict`` saved by a course notebook (``torch.save(model.state_dict(), path)``) loads
into the matching model here with ``strict=True``. Registry names and sources (the notebooks
are in the project's seed documents; ``docs/MODELS.md`` records every naming decision):

=================  ==========================  =============================================
name               class                       source
=================  ==========================  =============================================
``cnn``            :class:`CNN`                seed 000, baseline 3-block CNN
``se_cnn``         :class:`SE_CNN`             seed 000, SE ``ChannelAttention`` ``ca1..ca3``
``cbam_cnn``       :class:`CBAM_CNN`           seed 001, ``cbam1..cbam3``
``densenet_se``    :class:`DenseNet`           seed 002, ``SE_Block`` in every dense layer
``resnet18_cbam``  :class:`ResNet18_CBAM`      seed 003, ``backbone`` + ``cbam_layer1..4``
``resnet_se``      :class:`CustomCNN`          seed 004, ``SEModule`` in ``ResidualBlock``
=================  ==========================  =============================================

Use :func:`build_model` to build one by name, :func:`infer_architecture` to find the name and
keyword arguments that load a given state_dict, and :func:`compare_state_dict` to see why a
state_dict does not load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz.runtime.lazy import lazy_exports

# name -> module: loaded on first use, so that the light catalog (``attnviz inspect --list``)
# does not import torch.
_EXPORTS: dict[str, str] = {
    "CBAM": "attnviz.models.cbam",
    "CBAM_CNN": "attnviz.models.cifar_cnn",
    "CNN": "attnviz.models.cifar_cnn",
    "SE_CNN": "attnviz.models.cifar_cnn",
    "DenseNet": "attnviz.models.densenet_se",
    "ResNet18_CBAM": "attnviz.models.resnet18_cbam",
    "CustomCNN": "attnviz.models.resnet_se",
    **{
        name: "attnviz.models.registry"
        for name in (
            "ArchSpec",
            "StateDictDiff",
            "build_model",
            "compare_state_dict",
            "get_spec",
            "infer_architecture",
            "list_architectures",
            "nearest_architectures",
        )
    },
}

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.models.cbam import CBAM
    from attnviz.models.cifar_cnn import CBAM_CNN, CNN, SE_CNN
    from attnviz.models.densenet_se import DenseNet
    from attnviz.models.registry import (
        ArchSpec,
        StateDictDiff,
        build_model,
        compare_state_dict,
        get_spec,
        infer_architecture,
        list_architectures,
        nearest_architectures,
    )
    from attnviz.models.resnet18_cbam import ResNet18_CBAM
    from attnviz.models.resnet_se import CustomCNN

__all__ = [
    "CBAM",
    "CBAM_CNN",
    "CNN",
    "SE_CNN",
    "ArchSpec",
    "CustomCNN",
    "DenseNet",
    "ResNet18_CBAM",
    "StateDictDiff",
    "build_model",
    "compare_state_dict",
    "get_spec",
    "infer_architecture",
    "list_architectures",
    "nearest_architectures",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
