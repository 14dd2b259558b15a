"""Shared fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator, so image contents are reproducible."""
    return np.random.default_rng(0)


@pytest.fixture
def seeded() -> None:
    """Seed torch's global generator for tests that build randomly initialised models."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> object:
    """One intra-op thread: these small models gain nothing from more, and a shared CPU thrashes.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
