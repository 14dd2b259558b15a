"""Explanations computed from a model: Grad-CAM and friends (``cam``), metrics about maps (``metrics``)."""
