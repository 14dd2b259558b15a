"""The report's aggregates, gathered chunk by chunk and merged (as worker processes do), are those of
adding every record one by one: counts, confusion matrices, ranges and the gate sample exactly, sums
to rounding."""

from __future__ import annotations

import math
import pickle

import numpy as np

from attnviz.report.aggregate import Aggregator

MODELS = ("base", "gated")
CLASSES = ["a", "b", "c", "d"]


def _record(rng: np.random.Generator, index: int) -> dict:
    """A record's JSON form with random numbers: some unlabelled, some failed, some lost to NaN (``None``)."""
    if index % 17 == 5:
        return {"id": f"img-{index}", "status": "failed"}

    def number(low: float = 0.0, high: float = 1.0) -> float | None:
        return None if rng.random() < 0.05 else float(rng.uniform(low, high))

    def model(gated: bool) -> dict:
        entry = {
            "predicted": int(rng.integers(0, 4)),
            "prob": number(),
            "cam": {key: number() for key in ("p_target", "deletion_auc", "insertion_auc", "energy_pointing_game")}
            | {"pointing_game": bool(rng.random() < 0.5)},
            "spatial_gates": {},
            "channel_gates": {},
        }
        if gated:
            low, high = sorted(rng.uniform(0, 1, 2).tolist())
            entry["spatial_gates"] = {"s": {"mean": number(), "min": low, "max": high, "pointing_game": None}}
            for gate, channels in (("c1", 5), ("c2", 3)):
                values = rng.uniform(0, 1, channels).tolist()
                if rng.random() < 0.05:
                    values[0] = None
                entry["channel_gates"][gate] = {"mean": float(np.mean([v or 0 for v in values])), "values": values}
            entry["agreement"] = {"top20_iou": number(), "spearman": number(-1, 1)}
        return entry

    truth = None if rng.random() < 0.2 else int(rng.integers(0, 4))
    return {
        "id": f"img-{index}",
        "status": "ok",
        "truth_index": truth,
        "models": {"base": model(False), "gated": model(True)},
    }


def _close(merged, serial, where: str = "") -> None:
    """``merged`` equals ``serial``, floats to 1e-12 (relative) and everything else exactly."""
    assert type(merged) is type(serial), where
    if isinstance(serial, dict):
        assert list(merged) == list(serial), where
        for key in serial:
            _close(merged[key], serial[key], f"{where}.{key}")
    elif isinstance(serial, list):
        assert len(merged) == len(serial), where
        for index, (a, b) in enumerate(zip(merged, serial)):
            _close(a, b, f"{where}[{index}]")
    elif isinstance(serial, np.ndarray):
        np.testing.assert_allclose(merged, serial, rtol=1e-12, atol=1e-15, err_msg=where)
    elif isinstance(serial, float):
        assert math.isclose(merged, serial, rel_tol=1e-12, abs_tol=1e-15), (where, merged, serial)
    else:
        assert merged == serial, where


def test_merged_chunks_give_the_aggregates_of_one_pass():
    rng = np.random.default_rng(7)
    records = [_record(rng, index) for index in range(150)]
    serial = Aggregator(MODELS, CLASSES, sample_limit=20)
    for record in records:
        serial.add(record)

    merged = Aggregator(MODELS, CLASSES, sample_limit=20)
    for start in range(0, len(records), 13):
        chunk = Aggregator(MODELS, CLASSES, sample_limit=20)
        for record in records[start : start + 13]:
            chunk.add(record)
        merged.merge(pickle.loads(pickle.dumps(chunk)))  # as it comes back from a worker process

    expected = serial.summary()
    assert expected["images"] == 141 and expected["failed"] == 9 and expected["gate_sample"] == 20
    gated = expected["models"]["gated"]
    assert gated["spatial_gates"]["s"]["min"] is not None and set(gated["channel_gates"]) == {"c1", "c2"}
    assert (
        gated["confusion"] is not None and sum(map(sum, gated["confusion"]["matrix"])) == gated["accuracy"]["labelled"]
    )
    _close(merged.summary(), expected)
    for gate in ("c1", "c2"):
        values, labels = merged.sample("gated", gate)
        expected_values, expected_labels = serial.sample("gated", gate)
        assert np.array_equal(values, expected_values) and np.array_equal(labels, expected_labels)


def test_the_per_class_means_are_the_means_of_the_records():
    """Independent of the aggregator: each class's mean channel vector computed here from the records."""
    rng = np.random.default_rng(8)
    records = [_record(rng, index) for index in range(90)]
    merged = Aggregator(MODELS, CLASSES)
    for start in range(0, len(records), 11):
        chunk = Aggregator(MODELS, CLASSES)
        for record in records[start : start + 11]:
            chunk.add(record)
        merged.merge(chunk)
    per_class = merged.summary()["models"]["gated"]["channel_gates"]["c1"]["per_class"]
    vectors: dict[int, list[list[float]]] = {}
    for record in records:
        if record["status"] != "ok":
            continue
        entry = record["models"]["gated"]
        values = entry["channel_gates"]["c1"]["values"]
        if None not in values:
            label = record["truth_index"] if record["truth_index"] is not None else entry["predicted"]
            vectors.setdefault(label, []).append(values)
    assert set(per_class) == {CLASSES[k] for k in vectors}
    for label, rows in vectors.items():
        facts = per_class[CLASSES[label]]
        assert facts["n"] == len(rows)
        np.testing.assert_allclose(facts["mean"], np.mean(rows, axis=0), rtol=1e-12)
