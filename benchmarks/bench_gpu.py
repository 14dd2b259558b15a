"""GPU benchmarks: capture and Grad-CAM against a plain forward and the peers, the report, the main job.

Same model, batch and machine in one run, random weights, model in eval mode. Every row of a case
is timed in the same rounds, the rows taking turns in rotating order; each call is bracketed by
``torch.cuda.synchronize`` so that the time is the wall time until the results exist (captures
end with the copies to the CPU). Warm-up rounds first, then the median of the timed rounds.

    python benchmarks/bench_gpu.py --json gpu.json         # everything on cuda; print the tables
    python benchmarks/bench_gpu.py --parts capture,gradcam # some parts only
    python benchmarks/bench_gpu.py --from-json gpu.json --write   # the tables of a run made elsewhere
                                                                  # into "## GPU" of docs/BENCHMARKS.md
    python benchmarks/bench_gpu.py --device cpu --quick    # tiny sizes: proves the code paths

Parts:
    capture   forward (no_grad) against attnviz.Capturer(model) reused: gates only (feature_images=0),
              defaults (features of the first 8 images), and the features of every image (feature_images=None);
              the bytes a capture copies and bytes / time
    gradcam   forward+backward (predicted-class scores backpropagated to the parameters) against
              attnviz.gradcam(model, x, layer=L) (predicted class, upsampled), pytorch-grad-cam's GradCAM,
              captum's LayerGradCam + upsampling and torchcam's GradCAM on the same layer L
    maps      the README's main job, `attnviz maps` on the bundled samples, as a new process (wall time)
    report    `attnviz report` with the three sample models on shapes:N (images/s and where the time goes,
              from the report's own stage timers)
    curves    deletion/insertion (the report's: 10 steps, its perturbed batch size on the device) with the
              perturbed batches contiguous and channels-last, against a forward of the images; how far the
              two formats' AUCs are apart
The JSON written with --json is rewritten after each part, so a run cut short keeps the parts it finished.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _doc import DOC, machine, write_section
from _peers import gradcam_calls as peer_gradcam_calls
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GPU"
PACKAGES = ("torch", "torchvision", "timm", "grad-cam", "captum", "torchcam")
PARTS = ("capture", "gradcam", "maps", "report", "curves")
SAMPLE_MODELS = tuple(ROOT / "samples" / "models" / f"{arch}.pth" for arch in ("cnn", "se_cnn", "cbam_cnn"))
MAPS_MODEL = ROOT / "samples" / "models" / "cbam_cnn.pth"

Calls = dict[str, Callable[[], object]]
Result = dict[str, Any]


def _timm_resnet50_cbam() -> nn.Module:
    import timm

    return timm.create_model("resnet50", block_args={"attn_layer": "cbam"}, num_classes=1000)


def _timm_seresnet50() -> nn.Module:
    import timm

    return timm.create_model("seresnet50", num_classes=1000)


def _efficientnet_b0() -> nn.Module:
    import torchvision

    return torchvision.models.efficientnet_b0(weights=None, num_classes=1000)


def _zoo(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from attnviz.models import build_model

        return build_model(arch)

    return build


@dataclass(frozen=True)
class Model:
    """A benchmarked model: its short key (``--models``), builder, native input size and whether the
    capture part runs it."""

    key: str
    name: str
    build: Callable[[], nn.Module]
    size: int
    capture: bool = True


MODELS = (
    Model("resnet50_cbam", "timm resnet50 + CBAM", _timm_resnet50_cbam, 224),
    Model("cbam_cnn", "cbam_cnn", _zoo("cbam_cnn"), 32),
    Model("resnet18_cbam", "resnet18_cbam", _zoo("resnet18_cbam"), 32),
    Model("efficientnet_b0", "torchvision efficientnet_b0", _efficientnet_b0, 224),
    Model("seresnet50", "timm seresnet50", _timm_seresnet50, 224, capture=False),
)


@dataclass(frozen=True)
class Scale:
    """Sizes of one run: full on the GPU, tiny for the CPU check of the code paths."""

    max_size: int
    capture_batch: Callable[[int], int]
    gradcam_batches: tuple[int, ...]
    # (input, pictures, batch size, decode workers, render workers; None: the CLI's default)
    reports: tuple[tuple[str, bool, int, int, int | None], ...]
    report_steps: int
    curves_batch: Callable[[int], int]  # images per deletion/insertion call, by input size
    sanity_images: int
    maps_images: int | None  # None: all bundled samples, with pictures


FULL = Scale(
    max_size=1024,
    capture_batch=lambda size: 64 if size >= 224 else 256,
    gradcam_batches=(8, 64),
    reports=(("shapes:5000", False, 256, 4, None), ("shapes:1000", True, 256, 4, 8)),
    report_steps=10,
    curves_batch=lambda size: 16 if size >= 224 else 256,
    sanity_images=16,
    maps_images=None,
)
QUICK = Scale(
    max_size=32,
    capture_batch=lambda size: 2,
    gradcam_batches=(2,),
    reports=(("shapes:4", False, 4, 0, None),),
    report_steps=1,
    curves_batch=lambda size: 2,
    sanity_images=1,
    maps_images=1,
)


# Timing ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - start


def measure(calls: Calls, device: torch.device, warmup: int, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds per call of every timed round, and the rows that failed (row: one-line error).

    The first warm-up round (there is always one) finds the rows that fail; they are not timed.
    """
    live, errors = {}, {}
    for name, call in calls.items():
        try:
            _timed(call, device)
            live[name] = call
        except Exception as error:  # noqa: BLE001  (a library that fails on a model is a result, not a crash)
            errors[name] = one_line(error)
    names = list(live)
    for _ in range(warmup - 1):
        for name in names:
            _timed(live[name], device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            times[name].append(_timed(live[name], device))
    return times, errors


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def summarise(times: dict[str, list[float]], reference: str, batch: int) -> dict[str, dict[str, float]]:
    """Median, min and max in ms, images/s and the ratio to the ``reference`` row's median, per row."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians.get(reference, math.nan)
    return {
        name: {
            "median_ms": seconds * 1e3,
            "min_ms": min(times[name]) * 1e3,
            "max_ms": max(times[name]) * 1e3,
            "images_per_s": batch / seconds,
            "ratio": seconds / base,
        }
        for name, seconds in medians.items()
    }


# Capture --------------------------------------------------------------------------------------------


def feature_images_supported() -> bool:
    """Whether ``Capturer`` takes ``feature_images`` (features of the first N images only)."""
    from attnviz.capturing.capturer import Capturer

    return "feature_images" in inspect.signature(Capturer).parameters


def capture_bytes(captured: Any) -> int:
    """Bytes of every tensor a ``Capture`` holds (what the capture copied to the CPU)."""
    tensors = [captured.images, captured.logits, *captured.inputs.values(), *captured.outputs.values()]
    tensors += [gate.values for gate in captured.gates.values()] + list(captured.features.values())
    return sum(t.numel() * t.element_size() for t in tensors)


def capturers(model: nn.Module) -> dict[str, Any]:
    """The capture rows' reusable ``Capturer`` objects."""
    from attnviz.capturing.capturer import Capturer

    return {
        "capture: gates only (feature_images=0)": Capturer(model, feature_images=0),
        "capture: defaults (features of the first 8 images)": Capturer(model),
        "capture: features of every image": Capturer(model, feature_images=None),
    }


def capture_case(spec: Model, device: torch.device, scale: Scale, warmup: int, repeats: int) -> Result:
    """One model's capture rows."""
    model, x = _model_and_input(spec, device, scale, scale.capture_batch(spec.size))

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    copied: dict[str, int] = {}
    calls: Calls = {"forward (no_grad)": forward}
    calls.update({name: _recording(capturer, x, copied, name) for name, capturer in capturers(model).items()})
    times, errors = measure(calls, device, warmup, repeats)
    rows = summarise(times, "forward (no_grad)", len(x))
    for name, size in copied.items():
        if name in rows:
            rows[name]["bytes"] = size
            rows[name]["gb_per_s"] = size / (rows[name]["median_ms"] / 1e3) / 1e9
    return {"model": spec.name, "size": x.shape[-1], "batch": len(x), "rows": rows, "errors": errors}


def _recording(capturer: Any, x: torch.Tensor, copied: dict[str, int], name: str) -> Callable[[], object]:
    """A call of ``capturer`` on ``x`` that notes the bytes of what it captured in ``copied[name]``."""

    def call() -> object:
        captured = capturer(x)
        copied[name] = capture_bytes(captured)
        return captured

    return call


# Grad-CAM -------------------------------------------------------------------------------------------


def gradcam_calls(model: nn.Module, x: torch.Tensor, layer: str) -> Calls:
    """One callable per Grad-CAM row: a forward+backward pass, then attnviz and each peer (``_peers``)."""

    def forward_backward() -> object:
        scores = model(x)
        scores.gather(1, scores.argmax(1, keepdim=True)).sum().backward()
        model.zero_grad(set_to_none=True)
        return scores

    return {"forward+backward": forward_backward, **peer_gradcam_calls(model, x, layer)}


def gradcam_case(spec: Model, batch: int, device: torch.device, scale: Scale, warmup: int, repeats: int) -> Result:
    """One model's Grad-CAM rows at one batch size, every method on the layer attnviz picks."""
    from attnviz.explain.cam import resolve_cam_layer

    model, x = _model_and_input(spec, device, scale, batch)
    layer = resolve_cam_layer(model, x[:1])
    times, errors = measure(gradcam_calls(model, x, layer), device, warmup, repeats)
    rows = summarise(times, "forward+backward", batch)
    return {"model": spec.name, "size": x.shape[-1], "batch": batch, "layer": layer, "rows": rows, "errors": errors}


def _model_and_input(spec: Model, device: torch.device, scale: Scale, batch: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = spec.build().to(device).eval()
    size = min(spec.size, scale.max_size)
    return model, torch.randn(batch, 3, size, size, device=device)


# Deletion/insertion ---------------------------------------------------------------------------------------

CURVES_FORMATS = {"deletion/insertion: contiguous batches": False, "deletion/insertion: channels-last batches": True}


def curves_case(spec: Model, device: torch.device, scale: Scale, warmup: int, repeats: int) -> Result:
    """One model's deletion/insertion in both memory formats of the perturbed batches."""
    from attnviz.explain.metrics import deletion_insertion
    from attnviz.io.inputs import get_preset
    from attnviz.report.analysis import perturbed_batch

    model, x = _model_and_input(spec, device, scale, scale.curves_batch(spec.size))
    maps = torch.rand(len(x), *x.shape[-2:], device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    per_pass = perturbed_batch(get_preset("imagenet", size=x.shape[-1]), device)  # the report's, for this size
    steps = scale.report_steps

    def curves(channels_last: bool) -> Callable[[], dict]:
        def call() -> dict:
            return deletion_insertion(
                model, x, maps, targets, steps=steps, batch_size=per_pass, channels_last=channels_last
            )

        return call

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    calls: Calls = {"forward (no_grad)": forward, **{name: curves(last) for name, last in CURVES_FORMATS.items()}}
    times, errors = measure(calls, device, warmup, repeats)
    rows = summarise(times, "forward (no_grad)", len(x))
    difference = math.nan
    if not errors:
        contiguous, channels_last = curves(False)(), curves(True)()
        difference = max(
            float(abs(contiguous[key] - channels_last[key]).max()) for key in ("deletion_auc", "insertion_auc")
        )
    return {
        "model": spec.name,
        "size": x.shape[-1],
        "batch": len(x),
        "steps": steps,
        "per_pass": per_pass,
        "rows": rows,
        "max_auc_difference": difference,
        "errors": errors,
    }


# The report and the main job --------------------------------------------------------------------------


def report_run(
    spec: str, pictures: bool, batch: int, workers: int, render: int | None, device: str, scale: Scale
) -> Result:
    """``attnviz report`` with the three sample models, in this process (the stage timers are the report's;
    ``render`` None: as many render workers as the CLI starts by default on ``device``; build workers as
    the CLI's default)."""
    from attnviz.cli.report import _build_workers, _render_workers
    from bench_report import stages

    from attnviz.io.checkpoints import load_model
    from attnviz.report import ReportOptions, name_models, run_report

    models = name_models([load_model(path, device=device) for path in SAMPLE_MODELS])
    options = ReportOptions(
        batch_size=batch,
        workers=workers,
        render_workers=_render_workers(render, device),
        build_workers=_build_workers(None),
        steps=scale.report_steps,
        sanity_images=scale.sanity_images,
        pictures=pictures,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = run_report(models, spec, Path(folder) / "report", options)
        wall = time.perf_counter() - start
    rows = stages({"timings": result.timings, "wall": wall})
    return {
        "input": spec,
        "command": _report_command(spec, pictures, batch, workers, render, device, scale),
        "images": result.processed,
        "wall_s": wall,
        "images_per_s": result.processed / wall,
        "stages": {name: seconds for name, seconds, _ in rows},
        "timings": dict(result.timings),
    }


def _report_command(
    spec: str, pictures: bool, batch: int, workers: int, render: int | None, device: str, scale: Scale
) -> str:
    models = [str(path.relative_to(ROOT)) for path in SAMPLE_MODELS]
    words = ["attnviz report --baseline", models[0], *(f"--model {m}" for m in models[1:]), spec]
    words += [] if pictures else ["--no-pictures"]
    words += [f"--batch-size {batch}", f"--workers {workers}"]
    words += [f"--render-workers {render}"] if render is not None else []
    words += [] if scale is FULL else [f"--steps {scale.report_steps}", f"--sanity-images {scale.sanity_images}"]
    return " ".join([*words, f"--device {device}", "--out DIR"])


def maps_run(scale: Scale) -> Result:
    """The README's main job, ``attnviz maps`` on the bundled samples, as a new process (its wall time)."""
    images = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "samples" / "images").glob("*.png"))
    extra: list[str] = []
    if scale.maps_images is not None:
        images, extra = images[: scale.maps_images], ["--no-pictures"]
    model = str(MAPS_MODEL.relative_to(ROOT))
    with tempfile.TemporaryDirectory() as folder:
        command = ["maps", "--model", model, *images, *extra, "--out", str(Path(folder) / "maps")]
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "attnviz.cli.main", *command], cwd=ROOT, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
    shown = ["attnviz maps --model", model, "samples/images/*.png" if scale.maps_images is None else images[0]]
    return {
        "command": " ".join([*shown, *extra, "--out DIR"]),
        "images": len(images),
        "wall_s": wall,
        "returncode": done.returncode,
        "stderr_tail": done.stderr[-2000:],
    }


# The run ----------------------------------------------------------------------------------------------


def header(args: argparse.Namespace, command: str) -> Result:
    """What was run where: command, date, machine, device, versions, settings."""
    cuda = args.device.startswith("cuda")
    return {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": machine(PACKAGES),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "feature_images_supported": feature_images_supported(),
        "errors": [],
    }


def part_cases(part: str, args: argparse.Namespace, scale: Scale) -> Iterator[tuple[str, Callable[[], Result]]]:
    """(label, run) of each case of one part, in order."""
    device, rounds = torch.device(args.device), (args.warmup, args.repeats)
    if part == "capture":
        for model in (m for m in chosen(args) if m.capture):
            yield model.name, partial(capture_case, model, device, scale, *rounds)
    elif part == "gradcam":
        for model in chosen(args):
            for batch in scale.gradcam_batches:
                yield f"{model.name}, batch {batch}", partial(gradcam_case, model, batch, device, scale, *rounds)
    elif part == "curves":
        for model in (m for m in chosen(args) if m.capture):
            yield model.name, partial(curves_case, model, device, scale, *rounds)
    elif part == "maps":
        yield "samples", partial(maps_run, scale)
    else:
        for spec, pictures, batch, workers, render in scale.reports:
            yield spec, partial(report_run, spec, pictures, batch, workers, render, args.device, scale)


def run_part(part: str, results: Result, args: argparse.Namespace, scale: Scale, save: Callable[[], None]) -> None:
    """Run one part's cases into ``results[part]``, saving after each; a failing case is recorded in
    ``results["errors"]`` (as are the rows that failed inside a case) and the run goes on."""
    results[part] = {} if part == "maps" else []
    for label, run in part_cases(part, args, scale):
        _note(f"{part}: {label}")
        try:
            case = run()
        except Exception as error:  # noqa: BLE001  (one case's failure must not lose the others' results)
            results["errors"].append(f"{part}: {label}: {one_line(error)}")
            continue
        finally:
            _free(torch.device(args.device))
        if part == "maps":
            results[part] = case
            if case["returncode"] != 0:
                results["errors"].append(f"maps: exit {case['returncode']}: {case['stderr_tail'].strip()[-300:]}")
        else:
            results[part].append(case)
        results["errors"] += [f"{part}: {label}: {row}: {error}" for row, error in case.get("errors", {}).items()]
        save()


def chosen(args: argparse.Namespace) -> list[Model]:
    """The models named by ``--models`` (all by default), in the order of :data:`MODELS`."""
    return [model for model in MODELS if model.key in args.models.split(",")]


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _note(text: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _save(results: Result, path: Path | None) -> None:
    if path is None:
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    os.replace(temporary, path)


# Tables -----------------------------------------------------------------------------------------------


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.1f} ({row['min_ms']:.1f}–{row['max_ms']:.1f})"


def capture_table(cases: Sequence[Result]) -> str:
    lines = [
        "| model | input | batch | row | ms / batch: median (min–max) | images / s | × forward | MB copied | GB/s |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        for name, row in case["rows"].items():
            copied = f"{row['bytes'] / 1e6:.1f} | {row['gb_per_s']:.2f}" if "bytes" in row else "– | –"
            lines.append(
                f"| {case['model']} | {case['size']}² | {case['batch']} | {name} | {_ms(row)} | "
                f"{row['images_per_s']:.0f} | {row['ratio']:.2f}× | {copied} |"
            )
    return "\n".join(lines)


def gradcam_table(cases: Sequence[Result]) -> str:
    lines = [
        "| model | input | batch | layer | row | ms / batch: median (min–max) | images / s | × forward+backward | × attnviz |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        ours = case["rows"].get("attnviz gradcam", {}).get("median_ms")
        for name, row in case["rows"].items():
            speed = f"{row['median_ms'] / ours:.2f}×" if ours and name != "attnviz gradcam" else "–"
            lines.append(
                f"| {case['model']} | {case['size']}² | {case['batch']} | `{case['layer']}` | {name} | {_ms(row)} | "
                f"{row['images_per_s']:.0f} | {row['ratio']:.2f}× | {speed} |"
            )
    return "\n".join(lines)


def curves_table(cases: Sequence[Result]) -> str:
    lines = [
        "| model | input | images | steps | perturbed / pass | row | ms: median (min–max) | × forward | "
        "max \\|Δ AUC\\| |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for case in cases:
        for name, row in case["rows"].items():
            difference = f"{case['max_auc_difference']:.1e}" if name.endswith("channels-last batches") else "–"
            lines.append(
                f"| {case['model']} | {case['size']}² | {case['batch']} | {case['steps']} | {case['per_pass']} | "
                f"{name} | {_ms(row)} | {row['ratio']:.2f}× | {difference} |"
            )
    return "\n".join(lines)


def report_table(runs: Sequence[Result]) -> str:
    lines = ["| stage | " + " | ".join(f"`{run['input']}`" for run in runs) + " |", "| --- |" + " ---: |" * len(runs)]
    for stage in runs[0]["stages"]:
        cells = [f"{run['stages'][stage]:.1f} s ({100 * run['stages'][stage] / run['wall_s']:.0f}%)" for run in runs]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    walls = [f"**{run['wall_s']:.1f} s** ({run['images_per_s']:.0f} images/s)" for run in runs]
    lines.append("| **wall** | " + " | ".join(walls) + " |")
    return "\n".join(lines)


def section(results: Result) -> str:
    """The "## GPU" section of docs/BENCHMARKS.md from a run's results."""
    where = results["gpu"] or results["device"]
    parts = [
        f"{SECTION}\n",
        f"Command: `{results['command']}`  \nDate: {results['date']}  \nMachine: {results['machine']}  ",
        f"Device: {where}, {results['cores']} CPU cores, torch {results['torch']} (CUDA {results['cuda']}); "
        f"{results['warmup']} warm-up rounds, median of {results['repeats']} rounds, the rows of a case taking turns; "
        "each call bracketed by `torch.cuda.synchronize` (wall time until its results exist). Random weights, "
        f"eval mode, default TF32 settings ({results['tf32']}), cudnn.benchmark {results['cudnn_benchmark']}.\n",
    ]
    if results.get("capture"):
        every = "feature_images=None" if results["feature_images_supported"] else "this Capturer has no feature_images"
        parts += [
            "### Capture\n",
            "`attnviz.Capturer(model)(x)`, the Capturer reused; the last row records the features of every image "
            f"({every}). MB copied: every tensor of the returned Capture (on the CPU); GB/s: those bytes over the "
            "row's median time.\n",
            capture_table(results["capture"]) + "\n",
        ]
    if results.get("gradcam"):
        parts += [
            "### Grad-CAM\n",
            "Predicted class, maps upsampled to the input, every method on the layer attnviz picks. forward+backward "
            "backpropagates the predicted scores to the parameters; attnviz takes the gradient of the layer's output "
            "only. captum is given the predicted classes; pytorch-grad-cam's and torchcam's objects are built per "
            "call, as in their READMEs. The last column is the row's time over attnviz's.\n",
            gradcam_table(results["gradcam"]) + "\n",
        ]
    if results.get("maps"):
        maps = results["maps"]
        parts += [
            "### The main job\n",
            f"`{maps['command']}` ({maps['images']} images, a new process, start-up included): "
            f"**{maps['wall_s']:.1f} s** (exit {maps['returncode']}).\n",
        ]
    if results.get("report"):
        commands = "\n".join(f"- `{run['command']}`" for run in results["report"])
        parts += [
            "### Report\n",
            "Models: the three bundled samples. Seconds are the report's own stage timers (main process wall time; "
            f"see benchmarks/bench_report.py).\n\n{commands}\n",
            report_table(results["report"]) + "\n",
        ]
    if results.get("curves"):
        parts += [
            "### Deletion/insertion: contiguous or channels-last batches\n",
            "`attnviz.explain.metrics.deletion_insertion` with the report's steps and perturbed images per forward "
            "pass on this device, given targets; the perturbed batches contiguous or channels-last (the default "
            "on the CPU only). The last column: the largest difference of an image's AUC between the formats.\n",
            curves_table(results["curves"]) + "\n",
        ]
    if results["errors"]:
        parts.append("Errors:\n\n" + "\n".join(f"- {error}" for error in results["errors"]) + "\n")
    return "\n".join(parts)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: proves the code paths")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--models", default=",".join(m.key for m in MODELS), help="comma-separated keys (default: all)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 2; --quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 1)")
    parser.add_argument("--json", type=Path, default=None, help="write all results here (after every part)")
    parser.add_argument("--from-json", type=Path, default=None, help="print (and --write) the tables of this JSON")
    parser.add_argument("--write", action="store_true", help=f'replace "{SECTION}" in docs/BENCHMARKS.md')
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    unknown = set(args.models.split(",")) - {m.key for m in MODELS}
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(m.key for m in MODELS)}")
    if args.write and args.quick:
        parser.error("--write records full runs only, not --quick")
    if args.from_json is None and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu (with --quick for a check of the code paths)")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        command = " ".join(["python benchmarks/bench_gpu.py", *(sys.argv[1:] if argv is None else argv)])
        results = header(args, command)
        scale = QUICK if args.quick else FULL
        for part in (p for p in PARTS if p in args.parts.split(",")):
            run_part(part, results, args, scale, lambda: _save(results, args.json))
        _save(results, args.json)
    body = section(results)
    print(body)
    if args.write:
        write_section(SECTION, body)
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
