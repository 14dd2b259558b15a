"""The report's pipeline does per batch what it used to do per image, with the same numbers: batched
localisation and agreement equal the metrics image by image; one capturer per model for the whole
run; decoded batches travel in one block per preset; render workers draw and write records so the
process that runs the models does neither; without pictures nothing of the renderers is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from support import ROOT

from attnviz.explain import metrics
from attnviz.io.checkpoints import load_model
from attnviz.report import ReportOptions, name_models, run_report
from attnviz.report.analysis import agreement_batch, localise, nine_digits
from attnviz.report.schema import Localisation
from attnviz.report.sources import Decoded, collate_decoded

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = [ROOT / "samples" / "models" / f"{name}.pth" for name in ("cnn", "cbam_cnn")]


def fast(**changes) -> ReportOptions:
    return ReportOptions(**{"steps": 2, "sanity_images": 0, "batch_size": 3, "progress": False} | changes)


def written(folder) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in (folder / "items").glob("*.json")}


def test_batched_localisation_equals_the_metrics_image_by_image(rng):
    maps = torch.from_numpy(rng.random((7, 8, 8), dtype=np.float32))
    maps[1] = 0.5  # constant: every pixel a peak
    maps[2, 3, 3] = float("nan")
    masks = [rng.random((16, 16)) > 0.6 for _ in range(7)]
    masks[3] = np.zeros((16, 16), bool)  # empty: no localisation
    masks[4] = None
    masks[5] = rng.random((8, 12)) > 0.5  # another size: scored in its own group
    found = localise(maps, masks)
    assert found[2] == Localisation(None, None) and found[3] is None and found[4] is None
    for i in (0, 1, 5, 6):
        values = maps[i].numpy()
        expected = Localisation(
            bool(metrics.pointing_game(values, masks[i])), float(metrics.energy_pointing_game(values, masks[i]))
        )
        assert found[i] == expected, i  # exactly: the same operations


def test_batched_agreement_equals_the_metric_pair_by_pair(rng):
    first = rng.random((6, 9, 7))
    second = np.round(rng.random((6, 9, 7)), 1)  # many ties
    first[first < 0.5] = 0.0  # ReLU-like zeros: ties at the bottom
    first[2] = 0.25  # constant: no rank spread, rho is nan
    ious, rhos = agreement_batch(torch.from_numpy(first), torch.from_numpy(second))
    for i in range(6):
        expected = metrics.map_agreement(first[i], second[i])
        assert ious[i] == expected["top20_iou"], i  # exactly: counts of pixels
        assert rhos[i] == pytest.approx(expected["spearman"], rel=1e-12, abs=1e-15, nan_ok=True), i


def test_batched_agreement_of_grad_cam_sized_float32_maps_equals_the_metric(rng):
    first = torch.from_numpy(rng.random((5, 32, 32), dtype=np.float32))
    second = torch.relu(torch.from_numpy(rng.normal(0, 1, (5, 32, 32)).astype(np.float32)))  # half zeros
    ious, rhos = agreement_batch(first, second)
    for i in range(5):
        expected = metrics.map_agreement(first[i].numpy(), second[i].numpy())
        assert ious[i] == expected["top20_iou"] and rhos[i] == pytest.approx(expected["spearman"], rel=1e-12), i


def test_channel_values_keep_nine_significant_digits_exactly_as_formatting_them_does(rng):
    bits = rng.integers(0, 2**32, (64, 300), dtype=np.uint64).astype(np.uint32).view(np.float32)  # any float32
    gates = (1 / (1 + np.exp(-rng.normal(0, 8, (64, 300))))).astype(np.float32)  # sigmoid outputs
    special = np.array([0, -0.0, 1, 0.5, 0.1, np.nan, np.inf, 1e-45, 3.4e38, 0.123456789], np.float32)
    decades = np.float32(10.0) ** np.arange(-20, 20, dtype=np.float32)
    edges = np.stack([np.nextafter(decades, 0), decades, np.nextafter(decades, np.inf)])  # log10 near an integer
    ties = np.float32(2.0) ** -np.arange(1, 60, dtype=np.float32)[None]  # 2**-13 * 10**12 is n + 0.5 exactly
    for values in (bits, gates, np.tile(special, (2, 1)), edges, ties):
        expected = [[float(f"{v:.9g}") for v in row] for row in values.tolist()]
        found = nine_digits(values)
        assert np.array_equal(np.array(found), np.array(expected), equal_nan=True)
        assert np.array_equal(np.signbit(found), np.signbit(expected))


def test_a_decoded_batch_is_one_tensor_per_preset_with_the_same_values():
    tensors = [torch.full((3, 4, 4), float(i)) for i in range(3)]
    batch = [Decoded(0, tensors={"p": tensors[0]}), Decoded(1, error="broken"), Decoded(2, tensors={"p": tensors[2]})]
    out = collate_decoded(batch)
    assert [s.position for s in out] == [0, 1, 2] and out[1].tensors == {}
    assert torch.equal(out[0].tensors["p"], tensors[0]) and torch.equal(out[2].tensors["p"], tensors[2])
    storage = {s.tensors["p"].untyped_storage().data_ptr() for s in (out[0], out[2])}
    assert len(storage) == 1


def test_one_capturer_per_model_serves_every_batch_with_the_planned_pass(tmp_path, monkeypatch):
    from attnviz.report import analysis

    made = []

    class Counted(analysis.Capturer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(analysis, "Capturer", Counted)
    run_report(name_models([load_model(p) for p in MODELS]), "shapes:7", tmp_path / "out", fast())
    assert len(made) == len(MODELS)  # 3 batches (3, 3, 1 images) after the probe
    # gates only (the report records no feature maps): later batches hook the sigmoid modules alone
    assert [c.last_pass for c in made] == ["gates"] * len(MODELS)
    assert all(c.feature_images == 0 for c in made)


def test_render_workers_draw_and_write_records_so_this_process_does_neither(tmp_path, monkeypatch):
    from attnviz.report import pictures, records

    models = name_models([load_model(p) for p in MODELS])
    here = run_report(models, "shapes:5", tmp_path / "here", fast(pictures=False))

    def not_here(*args, **kwargs):
        raise AssertionError("called in the process that runs the models")

    writes = []
    write_record = records.write_record
    monkeypatch.setattr(records, "write_record", lambda out, record: writes.append(record) or write_record(out, record))
    monkeypatch.setattr(pictures, "write", not_here)
    for pics in (False, True):
        out = tmp_path / f"workers-{pics}"
        result = run_report(models, "shapes:5", out, fast(pictures=pics, render_workers=1))
        assert result.ok and result.processed == 5 and not writes
        assert "records (workers)" in result.timings and ("render (workers)" in result.timings) == pics
        if not pics:  # the same records as in this process
            assert written(out) == written(here.out)
    assert {r["pictures"]["image"] for r in written(tmp_path / "workers-True").values()} == {
        f"images/{key}.png" for key in written(here.out)
    }


def test_without_pictures_nothing_of_the_renderers_is_loaded_while_the_models_run(tmp_path):
    """(Nothing of them is loaded after the models either: the page's colour bar has its colours as constants.)"""
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        torch.set_num_threads(1)
        from attnviz.io.checkpoints import load_model
        from attnviz.report import ReportOptions, name_models, run_report, runner
        build, loaded = runner.build_report, []

        def before_the_page(out, **options):
            loaded.extend(m for m in sys.modules if m.startswith(("attnviz.render", "matplotlib")))
            return build(out, **options)

        runner.build_report = before_the_page
        models = name_models([load_model({str(MODELS[1])!r})])
        options = ReportOptions(steps=1, sanity_images=0, batch_size=2, pictures=False, progress=False)
        run_report(models, "shapes:2", {str(tmp_path / "out")!r}, options)
        print(sorted(loaded))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_render_workers_default_to_none_on_the_cpu_and_some_on_a_gpu(monkeypatch):
    from attnviz.cli.report import _render_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert _render_workers(None, "cpu") == 0
    assert _render_workers(None, "cuda") == 4 and _render_workers(None, "cuda:1") == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert _render_workers(None, "cuda") == 1
    assert _render_workers(3, "cpu") == 3


def test_build_workers_default_to_the_cores_this_process_may_use_up_to_8(monkeypatch):
    from attnviz.cli.report import _build_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert _build_workers(None) == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # the machine's, not this process's
    assert _build_workers(None) == 2
    assert _build_workers(0) == 0 and _build_workers(12) == 12
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # macOS, Windows: the machine's cores
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert _build_workers(None) == 3


def test_the_cli_gives_its_build_workers_to_the_report_and_the_merge(tmp_path, monkeypatch):
    from attnviz.cli.main import cli
    from attnviz.cli.report import _build_workers
    from click.testing import CliRunner

    from attnviz.report import merge, runner

    asked = []
    for module in (runner, merge):
        build = module.build_report

        def recorded(out, *, workers=0, build=build):
            asked.append(workers)
            return build(out, workers=workers)

        monkeypatch.setattr(module, "build_report", recorded)
    base = ["report", "--baseline", str(MODELS[0]), "shapes:2", "--no-pictures", "--steps", "1"]
    base += ["--sanity-images", "0", "--quiet"]
    for extra, out in ((["--build-workers", "3"], "a"), ([], "b")):
        result = CliRunner().invoke(cli, [*base, *extra, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["report", "--merge", str(tmp_path / "a"), "--out", str(tmp_path / "m"), "--build-workers", "5", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert asked == [3, _build_workers(None), 5]


def test_deletion_insertion_batches_are_larger_on_a_gpu_than_on_the_cpu():
    from attnviz.io.inputs import get_preset
    from attnviz.report.analysis import perturbed_batch

    small, large, middle = get_preset("cifar10"), get_preset("imagenet"), get_preset("imagenet", size=64)
    assert perturbed_batch(small) == perturbed_batch(small, "cpu") == 64  # about 64 × 32 × 32 pixels per pass
    assert perturbed_batch(middle) == 16 and perturbed_batch(large) == 8  # and 8 images at least
    assert perturbed_batch(small, "cuda:0") == 2048 and perturbed_batch(middle, "cuda") == 512
    assert perturbed_batch(large, torch.device("cuda")) == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_report_on_cuda_gives_the_numbers_of_the_cpu(tmp_path, monkeypatch):
    """The report's device paths (the batch moved once, Grad-CAM agreements on the device, 8× larger
    deletion/insertion batches), also with the models on different devices, against the CPU's report."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the GPU's numbers as the CPU's
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    on_cpu = name_models([load_model(p) for p in MODELS])
    mixed = name_models([load_model(MODELS[0], device="cuda"), load_model(MODELS[1])])  # baseline on the GPU
    on_gpu = name_models([load_model(p, device="cuda") for p in MODELS])
    expected = written(run_report(on_cpu, "shapes:6", tmp_path / "cpu", fast()).out)
    for name, models in (("gpu", on_gpu), ("mixed", mixed)):
        found = written(run_report(models, "shapes:6", tmp_path / name, fast()).out)
        assert found.keys() == expected.keys()
        for key, record in found.items():
            for model, outcome in record["models"].items():
                reference = expected[key]["models"][model]
                assert outcome["predicted"] == reference["predicted"]
                for number in ("p_target", "deletion_auc", "insertion_auc", "energy_pointing_game"):
                    assert outcome["cam"][number] == pytest.approx(reference["cam"][number], abs=1e-4), number
                agreement = outcome.get("agreement") or {}
                for number, value in agreement.items():
                    assert value == pytest.approx(reference["agreement"][number], abs=1e-3), number
