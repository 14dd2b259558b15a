"""What one capture holds: predictions, gates and the features around them (all on the CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnviz.capturing.gates import GATE_KINDS, GateKind


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k prediction."""

    index: int
    label: str
    prob: float


@dataclass
class Gate:
    """One attention gate as the model computed it.

    Attributes:
        name: unique name: the owning module's name, with ``#k`` appended when that module
            computed more than one gate in the forward pass.
        module: name of the attention module that computed the gate.
        kind: ``"channel"`` (values ``[B,C]``), ``"spatial"`` (``[B,H,W]``), ``"full"``
            (``[B,C,H,W]``, a gate the size of the feature map, as BAM's), ``"axis"``
            (coordinate attention's ``[B,C,H,1]`` or ``[B,C,1,W]``), ``"branch"``
            (selective-kernel softmax weights ``[B,M,C]``) or ``"other"`` (as computed).
        values: the gate as the model computed it, in the layout above (CPU).
        shape: the shape of the call's output as the model computed it (batch first).
        function: the call that produced it (``nn.Sigmoid``, ``torch.sigmoid``,
            ``hard sigmoid: relu6(x + 3) / 6``, ``F.softmax``...).
        gated_module: the key of ``Capture.inputs``/``outputs`` holding the feature map the gate
            multiplied (before) and the product (after): the gate's own name, or ``None`` when
            no gating multiplication was seen (softmax attention, a map returned to the caller).
    """

    name: str
    module: str
    kind: GateKind
    values: torch.Tensor
    shape: tuple[int, ...]
    function: str
    gated_module: str | None = None

    def stats(self, index: int | None = None) -> dict[str, float]:
        """Mean, min and max of the gate over one image (or the whole batch)."""
        values = self.values if index is None else self.values[index]
        values = values.float()
        return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}

    def is_constant(self, index: int | None = None, tolerance: float = 1e-3) -> bool:
        """True when the gate has (nearly) one value everywhere, over one image or the batch: a
        dead gate (its MLP's output is constant) scales every channel and position alike."""
        values = (self.values if index is None else self.values[index]).float()
        spread = values.max() - values.min()
        return bool(spread < tolerance)

    def __repr__(self) -> str:
        return f"Gate({self.name!r}, kind={self.kind!r}, shape={list(self.shape)}, function={self.function!r})"


@dataclass
class Capture:
    """Everything one forward pass of the model showed: predictions, gates and features.

    All tensors are on the CPU and have the batch dimension first. Gates are recorded for every
    image; ``inputs``, ``outputs`` and ``features`` for the first ``feature_images`` images of the
    batch (all of them unless the capture was limited, see :class:`Capturer`).
    ``findings`` counts what was seen besides gates (``"sigmoid activations"``, ``"softmax
    (not attention)"``), for :meth:`nothing_found`.
    """

    images: torch.Tensor
    logits: torch.Tensor
    gates: dict[str, Gate]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    class_names: list[str] | None = None
    originals: list[np.ndarray] | None = None
    model_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.logits.shape[0])

    @property
    def probs(self) -> torch.Tensor:
        """Softmax probabilities ``[B,K]``."""
        return torch.softmax(self.logits.float(), dim=1)

    @property
    def predicted(self) -> torch.Tensor:
        """Index of the top class per image ``[B]``."""
        return self.logits.argmax(dim=1)

    def label(self, index: int) -> str:
        """Class name of a class index (the index itself when no names are known)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def topk(self, image: int = 0, k: int = 5) -> list[Prediction]:
        """The ``k`` most probable classes of one image, most probable first."""
        probs = self.probs[image]
        values, indices = probs.topk(min(k, probs.numel()))
        return [Prediction(int(i), self.label(int(i)), float(p)) for p, i in zip(values, indices)]

    def gates_of_kind(self, kind: GateKind) -> dict[str, Gate]:
        """The gates of one kind (see :class:`Gate`), in forward order."""
        return {name: gate for name, gate in self.gates.items() if gate.kind == kind}

    def gate_table(self, image: int = 0) -> list[dict[str, Any]]:
        """One row per gate (name, module, kind, shape, mean, min, max, constant) for one image;
        ``constant``: the gate has one value everywhere (see :meth:`Gate.is_constant`)."""
        rows = []
        for gate in self.gates.values():
            row: dict[str, Any] = {
                "name": gate.name,
                "module": gate.module,
                "kind": gate.kind,
                "shape": list(gate.values.shape[1:]),
            }
            row.update(gate.stats(image))
            row["constant"] = gate.is_constant(image)
            rows.append(row)
        return rows

    def arrays(self, image: int | None = None) -> dict[str, np.ndarray]:
        """Every captured array keyed ``gate/<name>``, ``in/<module>``, ``out/<module>``,
        ``feature/<layer>``; the batch dimension is dropped when ``image`` is given."""
        groups = [
            ("gate", {name: gate.values for name, gate in self.gates.items()}),
            ("in", self.inputs),
            ("out", self.outputs),
            ("feature", self.features),
        ]
        arrays: dict[str, np.ndarray] = {}
        if image is not None:
            image %= self.batch_size
        for prefix, tensors in groups:
            for name, tensor in tensors.items():
                if image is not None and image >= tensor.shape[0]:
                    continue  # features were recorded for the first images only
                selected = tensor if image is None else tensor[image]
                arrays[f"{prefix}/{name}"] = selected.float().numpy()
        return arrays

    def save(self, path: str, image: int | None = None) -> None:
        """Write :meth:`arrays` to a compressed ``.npz`` file."""
        arrays: dict[str, Any] = self.arrays(image)  # numpy's stub types **kwds as if one could be allow_pickle
        np.savez_compressed(path, **arrays)

    def __getitem__(self, image: int) -> Capture:
        """The capture of one image of the batch (batch dimension kept, size 1)."""
        if not -self.batch_size <= image < self.batch_size:
            raise IndexError(f"image {image} out of range for a batch of {self.batch_size}")
        image %= self.batch_size
        span = slice(image, image + 1)
        return Capture(
            images=self.images[span],
            logits=self.logits[span],
            gates={
                name: Gate(g.name, g.module, g.kind, g.values[span], g.shape, g.function, g.gated_module)
                for name, g in self.gates.items()
            },
            inputs={k: v[span] for k, v in self.inputs.items() if image < v.shape[0]},
            outputs={k: v[span] for k, v in self.outputs.items() if image < v.shape[0]},
            features={k: v[span] for k, v in self.features.items() if image < v.shape[0]},
            class_names=self.class_names,
            originals=None if self.originals is None else self.originals[span],
            model_name=self.model_name,
            metadata=dict(self.metadata),
            findings=dict(self.findings),
        )

    def nothing_found(self) -> str | None:
        """``None`` when a gate was found; else one line saying what the forward pass showed."""
        if self.gates:
            return None
        seen = [f"{count} {what}" for what, count in self.findings.items() if count]
        if not seen:
            return "no attention gates found: the model calls no sigmoid or softmax"
        return "no attention gates found; seen: " + "; ".join(seen)

    def __repr__(self) -> str:
        counts = [f"{len(self.gates_of_kind(k))} {k}" for k in GATE_KINDS if self.gates_of_kind(k)]
        kinds = f" ({', '.join(counts)})" if counts else ""
        return (
            f"Capture({self.model_name or 'model'}: {self.batch_size} image(s), "
            f"{len(self.gates)} gates{kinds}, {len(self.features)} feature maps)"
        )

    def _repr_html_(self) -> str:
        from html import escape

        top = self.topk(0, 3)
        pred = ", ".join(f"{escape(p.label)} {p.prob:.3f}" for p in top)
        rows = "".join(
            f"<tr><td>{escape(r['name'])}</td><td>{r['kind']}</td><td>{r['shape']}</td>"
            f"<td>{r['mean']:.3f}</td><td>{r['min']:.3f}</td><td>{r['max']:.3f}</td></tr>"
            for r in self.gate_table(0)
        )
        return (
            f"<div><b>{escape(repr(self))}</b><br>image 0: {pred}"
            "<table><tr><th>gate</th><th>kind</th><th>shape</th><th>mean</th><th>min</th><th>max</th></tr>"
            f"{rows}</table></div>"
        )
