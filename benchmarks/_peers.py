"""Grad-CAM by attnviz and by each peer library, called as its README shows, for the benchmark scripts.

Every call explains the predicted class at ``layer`` and returns maps upsampled to the input;
pytorch-grad-cam's and torchcam's objects are built per call, captum is given the predicted
classes precomputed. The peers are imported inside their calls: a missing one fails its rows only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def gradcam_calls(model: nn.Module, x: torch.Tensor, layer: str) -> dict[str, Callable[[], object]]:
    """One callable per library, keyed by its row name."""
    from attnviz.explain.cam import gradcam

    module = model.get_submodule(layer)
    size = tuple(x.shape[-2:])
    with torch.no_grad():
        predicted = model(x).argmax(1)

    def attnviz_gradcam() -> object:
        return gradcam(model, x, layer=layer).maps

    def library_gradcam() -> object:
        from pytorch_grad_cam import GradCAM

        with GradCAM(model=model, target_layers=[module]) as cam:
            return cam(input_tensor=x, targets=None)

    def captum_gradcam() -> object:
        from captum.attr import LayerAttribution, LayerGradCam

        raw = LayerGradCam(model, module).attribute(x, target=predicted, relu_attributions=True)
        return LayerAttribution.interpolate(raw, size, interpolate_mode="bilinear")

    def torchcam_gradcam() -> object:
        from torchcam.methods import GradCAM

        with GradCAM(model, target_layer=layer) as extractor:
            scores = model(x)
            (cams,) = extractor(scores.argmax(1).tolist(), scores)
        return F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)

    return {
        "attnviz gradcam": attnviz_gradcam,
        "pytorch-grad-cam GradCAM": library_gradcam,
        "captum LayerGradCam + upsample": captum_gradcam,
        "torchcam GradCAM": torchcam_gradcam,
    }
