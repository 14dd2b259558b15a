"""benchmarks/bench_cam.py's operator count: what a call dispatches, views left out."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_cam  # benchmarks/ is not a package: found through sys.path


def test_operators_counts_kernels_and_leaves_out_views() -> None:
    x = torch.randn(4, 6)

    def work() -> torch.Tensor:
        y = x.view(2, 12).t().unsqueeze(0)  # three views: not counted
        return (y * 2).sum() + x.mean()  # mul, sum, mean, add

    assert bench_cam.operators(work) == 4
    assert bench_cam.operators(lambda: x.detach()[1:]) == 0


def test_operators_of_a_forward_count_each_layer_call() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 6)
    with torch.no_grad():
        once = bench_cam.operators(lambda: model(x))
        twice = bench_cam.operators(lambda: (model(x), model(x)))
    assert once >= 3  # two linear layers and a ReLU, each at least one operator
    assert twice == 2 * once
