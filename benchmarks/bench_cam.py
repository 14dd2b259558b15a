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
    attnviz gradcam      attnviz.explain.cam.gradcam: predicted class, maps upsampled to the input and normalised
    pytorch-grad-cam     ``with GradCAM(model, [layer]) as cam: cam(x, None)`` (predicted class, upsampled)
    captum LayerGradCam + upsample   attribute(target=precomputed predictions) + LayerAttribution.interpolate
    torchcam GradCAM     ``with GradCAM(model, layer) as e``: forward, e(predictions, scores), upsampling
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from _doc import DOC, machine, write_section
from _peers import gradcam_calls
from torch import nn

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

    return {
        "forward (no_grad)": forward_no_grad,
        "forward (grad)": forward_grad,
        "attnviz capture": attnviz_capture,
        "attnviz capture (new Capturer)": attnviz_capture_new,
        **gradcam_calls(model, x, case.layer),
    }


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


def run_case(case: Case, device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = case.build().to(device).eval()
    x = torch.randn(case.batch, 3, case.size, case.size, device=device)
    return measure(runners(case, model, x), device, warmup, repeats)


def table(results: list[tuple[Case, str, dict[str, list[float]]]]) -> str:
    lines = [
        "| case | device | batch | method | ms / batch: median (min–max) | images / s | time / forward |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for case, device, times in results:
        medians = {name: statistics.median(values) for name, values in times.items()}
        reference = medians["forward (no_grad)"]
        for name, seconds in medians.items():
            spread = f"{min(times[name]) * 1e3:.0f}–{max(times[name]) * 1e3:.0f}"
            lines.append(
                f"| {case.name} {case.size}×{case.size} | {device} | {case.batch} | {name} | "
                f"{seconds * 1e3:.1f} ({spread}) | {case.batch / seconds:.1f} | {seconds / reference:.2f}× |"
            )
    lines.append("")
    for case, device, times in results:
        medians = {name: statistics.median(values) for name, values in times.items()}
        ours = medians["attnviz gradcam"]
        forward = medians["forward (no_grad)"]
        lines.append(
            f"- {case.name} {case.size}×{case.size}, {device}: attnviz capture costs "
            f"{medians['attnviz capture'] / forward:.2f}× a no_grad forward "
            f"({medians['attnviz capture (new Capturer)'] / forward:.2f}× with a new Capturer per call)."
        )
        lines.append(
            f"- {case.name} {case.size}×{case.size}, {device}: attnviz Grad-CAM costs "
            f"{ours / medians['forward (no_grad)']:.2f}× a no_grad forward and "
            f"{ours / medians['forward (grad)']:.2f}× a forward with grad; throughput "
            f"{medians['pytorch-grad-cam GradCAM'] / ours:.2f}× pytorch-grad-cam's, "
            f"{medians['captum LayerGradCam + upsample'] / ours:.2f}× captum's, "
            f"{medians['torchcam GradCAM'] / ours:.2f}× torchcam's."
        )
    return "\n".join(lines)


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
        "is the row's median time over the no_grad forward's. On a CPU shared with other processes "
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
                results.append((case, where, run_case(case, torch.device(device), args.warmup, args.repeats)))
    text = table(results)
    print(text)
    if args.write:
        command = "python benchmarks/bench_cam.py " + " ".join(sys.argv[1:])
        write_section(SECTION, section(text, command.strip(), thread_counts, args.warmup, args.repeats))
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
