"""Capture and Grad-CAM throughput: attnviz against a plain forward, pytorch-grad-cam, captum and torchcam.

Same model, batch and machine in one run, random weights. For each case the methods take turns
(one call each per round, in rotating order) so that load from other processes spreads over all
of them; the table shows the median time per batch.

    python benchmarks/bench_cam.py                 # CPU (and CUDA when available), print the table
    python benchmarks/bench_cam.py --write         # also replace "## Capture and Grad-CAM" in docs/BENCHMARKS.md

Rows:
    forward (no_grad)    the plain forward pass, the reference of the ratio column
    forward (grad)       a forward pass with autograd recording (parameters require grad)
    attnviz capture      attnviz.Capturer(model)(x): every gate, features around each gate and the default
                         feature layers, copied to the CPU (the Capturer is reused, as in batch runs)
    attnviz capture (new Capturer)   attnviz.capture(model, x): the same, finding the layers anew
    attnviz capture (gates only)     attnviz.Capturer(model, feature_images=0)(x): the gates, no feature maps
    attnviz gradcam      attnviz.explain.cam.gradcam: predicted class, maps upsampled to the input and normalised
    pytorch-grad-cam     ``with GradCAM(model, [layer]) as cam: cam(x, None)`` (predicted class, upsampled)
    captum LayerGradCam + upsample   attribute(target=precomputed predictions) + LayerAttribution.interpolate
    torchcam GradCAM     ``with GradCAM(model, layer) as e``: forward, e(predictions, scores), upsampling

The "operators" column counts the torch operators one call dispatches, views left out (counted once,
outside the timing, with a ``TorchDispatchMode``). Each of them is about one kernel launch on a GPU,
where a small model's batch is bound by launches rather than by arithmetic: the count compares the
rows on any machine.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from _doc import DOC, machine, write_section
from _peers import gradcam_calls
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from attnviz.capturing.capturer import Capturer, capture
from attnviz.models import build_model

SECTION = "## Capture and Grad-CAM"
PACKAGES = ("torch", "torchvision", "grad-cam", "captum", "torchcam")


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    layer: str
    size: int
    batch: int


CASES = (
    Case("cbam_cnn", lambda: build_model("cbam_cnn", num_classes=10), "cbam3", 32, 64),
    Case("ResNet18_CBAM", lambda: build_model("resnet18_cbam", num_classes=10), "cbam_layer4", 32, 32),
    Case("torchvision resnet18", lambda: torchvision.models.resnet18(num_classes=1000), "layer4", 224, 8),
)


def runners(case: Case, model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """One callable per row. Each library's object is built inside its call, as in its README."""

    def forward_no_grad() -> object:
        with torch.no_grad():
            return model(x)

    def forward_grad() -> object:
        return model(x)

    capturer = Capturer(model)

    def attnviz_capture() -> object:
        return capturer(x)

    def attnviz_capture_new() -> object:
        return capture(model, x)

    gates_only = Capturer(model, feature_images=0)

    def attnviz_capture_gates() -> object:
        return gates_only(x)

    return {
        "forward (no_grad)": forward_no_grad,
        "forward (grad)": forward_grad,
        "attnviz capture": attnviz_capture,
        "attnviz capture (new Capturer)": attnviz_capture_new,
        "attnviz capture (gates only)": attnviz_capture_gates,
        **gradcam_calls(model, x, case.layer),
    }


class _OperatorCount(TorchDispatchMode):
    """Counts the operators dispatched inside the ``with`` block, views left out."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


def operators(call: Callable[[], object]) -> int:
    """Non-view torch operators that one call of ``call`` dispatches."""
    with _OperatorCount() as counter:
        call()
    return counter.count


def measure(
    calls: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of every round, the rows taking turns in rotating order."""

    def timed(call: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    names = list(calls)
    for _ in range(warmup):
        for name in names:
            timed(calls[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(calls[name]))
    return times


def run_case(
    case: Case, device: torch.device, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per call of every round, and operators per call, for every row."""
    torch.manual_seed(0)
    model = case.build().to(device).eval()
    x = torch.randn(case.batch, 3, case.size, case.size, device=device)
    calls = runners(case, model, x)
    times = measure(calls, device, warmup, repeats)
    return times, {name: operators(call) for name, call in calls.items()}


Result = tuple[Case, str, dict[str, list[float]], dict[str, int]]


def table(results: list[Result]) -> str:
    lines = [
        "| case | device | batch | method | ms / batch: median (min–max) | images / s | time / forward | operators |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for case, device, times, counts in results:
        medians = {name: statistics.median(values) for name, values in times.items()}
        reference = medians["forward (no_grad)"]
        for name, seconds in medians.items():
            spread = f"{min(times[name]) * 1e3:.0f}–{max(times[name]) * 1e3:.0f}"
            lines.append(
                f"| {case.name} {case.size}×{case.size} | {device} | {case.batch} | {name} | "
                f"{seconds * 1e3:.1f} ({spread}) | {case.batch / seconds:.1f} | {seconds / reference:.2f}× | "
                f"{counts[name]} |"
            )
    lines.append("")
    for case, device, times, counts in results:
        medians = {name: statistics.median(values) for name, values in times.items()}
        ours = medians["attnviz gradcam"]
        forward = medians["forward (no_grad)"]
        lines.append(
            f"- {case.name} {case.size}×{case.size}, {device}: attnviz capture costs "
            f"{medians['attnviz capture'] / forward:.2f}× a no_grad forward "
            f"({medians['attnviz capture (new Capturer)'] / forward:.2f}× with a new Capturer per call, "
            f"{medians['attnviz capture (gates only)'] / forward:.2f}× for the gates only); the gates-only capture "
            f"dispatches {_operators(counts['attnviz capture (gates only)'] - counts['forward (no_grad)'])} beyond "
            f"the forward's {counts['forward (no_grad)']}."
        )
        lines.append(
            f"- {case.name} {case.size}×{case.size}, {device}: attnviz Grad-CAM costs "
            f"{ours / medians['forward (no_grad)']:.2f}× a no_grad forward and "
            f"{ours / medians['forward (grad)']:.2f}× a forward with grad; throughput "
            f"{medians['pytorch-grad-cam GradCAM'] / ours:.2f}× pytorch-grad-cam's, "
            f"{medians['captum LayerGradCam + upsample'] / ours:.2f}× captum's, "
            f"{medians['torchcam GradCAM'] / ours:.2f}× torchcam's; operators "
            f"{counts['attnviz gradcam']} against {counts['pytorch-grad-cam GradCAM']}, "
            f"{counts['captum LayerGradCam + upsample']} and {counts['torchcam GradCAM']}."
        )
    return "\n".join(lines)


def _operators(count: int) -> str:
    return f"{count} operator{'' if count == 1 else 's'}"


def section(text: str, command: str, threads: list[int], warmup: int, repeats: int) -> str:
    return (
        f"{SECTION}\n\n"
        f"Command: `{command}`  \n"
        f"Date: {datetime.date.today().isoformat()}  \n"
        f"Machine: {machine(PACKAGES)}; torch.set_num_threads {' and '.join(map(str, threads))}  \n"
        f"Random weights, model in eval mode, {warmup} warm-up rounds, median of {repeats} rounds "
        "(methods take turns). Every library is given the target layer; pytorch-grad-cam's and "
        "torchcam's objects are built per call, as in their READMEs. captum gets the predicted "
        "classes precomputed; every other row finds them in its own forward pass. The last column "
        "is the row's median time over the no_grad forward's; \"operators\" counts the torch operators one "
        "call dispatches, views left out (about one kernel launch each on a GPU, where a small model's "
        "batch is bound by launches; the count is the same on any machine). On a CPU shared with other processes "
        "more threads than idle cores make every row slower and noisier (see min–max): compare rows "
        "within one device and thread count.\n\n"
        f"{text}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu or cuda (repeatable); default: all present")
    parser.add_argument("--threads", type=int, action="append", help="torch.set_num_threads (repeatable)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--write", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = parser.parse_args()
    thread_counts = args.threads or [torch.get_num_threads()]
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for device in devices:
        for threads in thread_counts if device == "cpu" else thread_counts[:1]:
            torch.set_num_threads(threads)
            where = f"{device}, {threads} thread{'s' if threads > 1 else ''}" if device == "cpu" else device
            for case in CASES:
                print(f"{case.name} {case.size}px, batch {case.batch}, {where}", file=sys.stderr, flush=True)
                times, counts = run_case(case, torch.device(device), args.warmup, args.repeats)
                results.append((case, where, times, counts))
    text = table(results)
    print(text)
    if args.write:
        command = "python benchmarks/bench_cam.py " + " ".join(sys.argv[1:])
        write_section(SECTION, section(text, command.strip(), thread_counts, args.warmup, args.repeats))
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
