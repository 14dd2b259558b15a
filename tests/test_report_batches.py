"""The report's decoded batches: one tensor per preset from the loader to the model.

``collate_decoded`` stacks each preset's tensors once (in the decoding worker); ``stack_rows`` hands
that block to the model without a copy, also after the batch crossed from a worker process; a
``DecodedBatch`` pins each block once when the DataLoader's pin-memory thread asks (a model on
CUDA); and every model still gets its own input, since a model may change it in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.pin_memory import pin_memory as loader_pin_memory

from attnviz.io.checkpoints import LoadedModel
from attnviz.io.inputs import get_preset
from attnviz.models import build_model
from attnviz.report.analysis import AnalysisOptions, analyse_batch, prepare_models
from attnviz.report.sources import Decoded, DecodedBatch, collate_decoded, stack_rows
from attnviz.runtime.model import to_model


def _batch(count: int = 4, keys: tuple[str, ...] = ("p",)) -> DecodedBatch:
    torch.manual_seed(0)
    samples = [Decoded(i, tensors={key: torch.rand(3, 8, 8) for key in keys}) for i in range(count)]
    samples.insert(2, Decoded(count, error="broken"))  # no tensors
    return collate_decoded(samples)


def _good(batch: DecodedBatch) -> list[Decoded]:
    return [sample for sample in batch if sample.error is None]


def test_the_rows_of_a_collated_batch_stack_without_a_copy():
    good = _good(_batch())
    rows = [sample.tensors["p"] for sample in good]
    stacked = stack_rows(rows)
    assert torch.equal(stacked, torch.stack(rows))
    assert stacked.data_ptr() == rows[0].data_ptr() and stacked.is_contiguous()
    stacked[1].fill_(7.0)  # the same memory as the samples' tensors
    assert torch.equal(good[1].tensors["p"], torch.full((3, 8, 8), 7.0))


def test_rows_that_are_not_one_block_in_order_are_copied():
    rows = [sample.tensors["p"] for sample in _good(_batch())]
    loose = [torch.rand(3, 8, 8) for _ in range(3)]
    for tensors in (rows[:1] + rows[2:], rows[::-1], loose, [rows[0], rows[0]]):
        stacked = stack_rows(tensors)
        assert torch.equal(stacked, torch.stack(tensors))
        assert stacked.data_ptr() != tensors[0].data_ptr()
    assert stack_rows(rows[1:]).data_ptr() == rows[1].data_ptr()  # the last rows of the block are one block too
    transposed = [row.transpose(1, 2) for row in rows]  # one block, but not contiguous rows
    assert torch.equal(stack_rows(transposed), torch.stack(transposed))
    conjugate = list(torch.rand(3, 2, 2, dtype=torch.complex64).conj())  # one block, read conjugated
    assert torch.equal(stack_rows(conjugate), torch.stack(conjugate))


def test_rows_that_need_gradients_each_get_theirs():
    block = torch.rand(3, 2, 2, requires_grad=True)
    rows = [block[0], block[1], block[2]]  # rows of one block, each a view that carries gradients
    stack_rows(rows).sum().backward()
    assert torch.equal(block.grad, torch.ones(3, 2, 2))


class _Images(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> Decoded:
        return Decoded(index, tensors={"p": torch.full((3, 4, 4), float(index))})


def test_a_batch_from_a_worker_process_still_reaches_the_model_as_one_block():
    loader = DataLoader(_Images(), batch_size=3, num_workers=1, collate_fn=collate_decoded)
    for batch in loader:
        assert isinstance(batch, DecodedBatch)
        rows = [sample.tensors["p"] for sample in batch]
        stacked = stack_rows(rows)
        assert stacked.data_ptr() == rows[0].data_ptr()
        assert torch.equal(stacked[:, 0, 0, 0], torch.tensor([float(s.position) for s in batch]))


def test_pinning_a_batch_pins_each_presets_block_once(monkeypatch):
    pinned: list[tuple[int, ...]] = []

    def pin(tensor: torch.Tensor, device: object = None) -> torch.Tensor:  # no GPU here: a copy stands in
        pinned.append(tuple(tensor.shape))
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = _batch(keys=("p", "q"))
    before = {key: torch.stack([s.tensors[key] for s in _good(batch)]) for key in ("p", "q")}
    assert loader_pin_memory(batch) is batch  # what the DataLoader's pin-memory thread calls
    assert not isinstance(batch, Sequence)  # which some torch releases would pin item by item
    assert sorted(pinned) == [(4, 3, 8, 8), (4, 3, 8, 8)]  # one copy per preset, not one per image
    for key in ("p", "q"):
        rows = [sample.tensors[key] for sample in _good(batch)]
        stacked = stack_rows(rows)
        assert stacked.data_ptr() == rows[0].data_ptr()  # still one block: the model gets it as it is
        assert torch.equal(stacked, before[key])
    assert batch[2].tensors == {}


class _NormalisesInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("cbam_cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.sub_(0.5).div_(0.25))


def test_each_model_gets_the_images_as_decoded_when_one_changes_its_input_in_place():
    torch.manual_seed(0)
    preset = get_preset("cifar10")
    changes, plain = _NormalisesInPlace().eval(), build_model("se_cnn").eval()
    runs = prepare_models(
        {
            "changes": LoadedModel(changes, "changes", preset=preset),
            "plain": LoadedModel(plain, "plain", preset=preset),
        },
        None,
    )
    images = torch.rand(3, 3, 32, 32)
    batch = collate_decoded([Decoded(i, tensors={runs[0].key: images[i].clone()}) for i in range(3)])
    results = analyse_batch(runs, list(batch), [None] * 3, AnalysisOptions(steps=1), {})
    with torch.no_grad():
        expected = plain(images).softmax(dim=1).max(dim=1)
    found = [entries["plain"] for entries, _ in results]
    assert [outcome.predicted for outcome in found] == expected.indices.tolist()
    assert torch.allclose(torch.tensor([outcome.prob for outcome in found]), expected.values, atol=1e-6)
    assert torch.equal(stack_rows([sample.tensors[runs[0].key] for sample in batch]), images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_pinned_batch_reaches_a_cuda_model_in_one_copy_without_a_wait():
    loader = DataLoader(_Images(), batch_size=3, num_workers=1, collate_fn=collate_decoded, pin_memory=True)
    model = nn.Conv2d(3, 2, 1).cuda()
    for batch in loader:
        rows = [sample.tensors["p"] for sample in batch]
        stacked = stack_rows(rows)
        assert stacked.is_pinned() and stacked.data_ptr() == rows[0].data_ptr()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
        try:
            images = to_model(stacked, model)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert images.is_cuda and torch.equal(images.cpu(), stacked)


def test_unlabelled_images_are_explained_for_the_majority_then_the_most_probable_then_the_lowest_class():
    from attnviz.report.analysis import choose_targets

    logits = [  # three models, four images, three classes
        torch.tensor([[5.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0, 1.0, 0.0], [1.0, 0.0, -10.0]]),
        torch.tensor([[0.0, 5.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.5, 0.0], [0.0, 1.0, -10.0]]),
        torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.0, 3.0], [0.5, 0.5, 5.0]]),
    ]
    truths = [None, 2, None, None]
    probs = [np.exp(x.double().numpy()) / np.exp(x.double().numpy()).sum(1, keepdims=True) for x in logits]
    expected = []
    for i, truth in enumerate(truths):
        if truth is not None:
            expected.append(truth)
            continue
        votes = np.bincount([int(p[i].argmax()) for p in probs], minlength=3)
        tied = np.flatnonzero(votes == votes.max())
        totals = sum(p[i] for p in probs)
        best = max(totals[tied])
        expected.append(int(min(c for c in tied if np.isclose(totals[c], best, rtol=0, atol=1e-6))))
    assert expected == [1, 2, 1, 0]  # majority; given; a three-way tie won on probability; classes 0 and 1 tie
    assert choose_targets(truths, logits) == expected
    assert choose_targets([3, 1, 0, 2], logits) == [3, 1, 0, 2]  # labelled images: their labels
