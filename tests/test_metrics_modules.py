"""explain/metrics.py is the public face of the two metric modules and holds no logic of its own."""

from __future__ import annotations

import inspect

from attnviz.explain import array_metrics, metrics, model_metrics


def test_metrics_re_exports_both_modules_unchanged():
    assert set(metrics.__all__) == (set(array_metrics.__all__) | set(model_metrics.__all__)) - {
        "Initializer",
        "Targets",
    }
    for name in metrics.__all__:
        home = array_metrics if name in array_metrics.__all__ else model_metrics
        assert getattr(metrics, name) is getattr(home, name)
    assert metrics.BASELINES == ("blur", "zero", "mean")


def test_metrics_face_defines_nothing():
    own = [
        name
        for name, value in vars(metrics).items()
        if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == metrics.__name__
    ]
    assert own == []


def test_array_metrics_run_no_model():
    source = inspect.getsource(array_metrics)
    assert "nn.Module" not in source and "attnviz.runtime.model" not in source
