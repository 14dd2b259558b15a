"""Output folders: attnviz replaces only files it wrote, in a folder that holds its own output; one
run per folder at a time (a lock with the holder's pid); merged shards cannot make it read or write
outside their folders and --out."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from support import ROOT, run

from attnviz.io.checkpoints import load_model
from attnviz.report import ReportOptions, name_models, run_report, runner

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ROOT / "samples" / "models"
IMAGE = ROOT / "samples" / "images" / "00_circle.png"
FAST = ("--steps", 2, "--sanity-images", 0, "--batch-size", 4, "--no-pictures", "--quiet")
LOCK = ".attnviz.lock"
OURS = "0123456789ab"  # the 12 hex digits of attnviz's temporary names: .<name>.<12 hex>.tmp


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry below ``folder`` (and the folder itself): contents and modification time."""
    entries = {".": (None, folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        entries[path.relative_to(folder).as_posix()] = (
            path.read_bytes() if path.is_file() else None,
            path.lstat().st_mtime_ns,
        )
    return entries


def report(out: Path, *extra: object) -> Result:
    return run("report", "--baseline", MODELS / "cnn.pth", "shapes:2", "--out", out, *FAST, *extra)


def maps(out: Path, *extra: object) -> Result:
    return run("maps", "--model", MODELS / "cnn.pth", IMAGE, "--out", out, "--no-pictures", *extra)


def hold_lock(out: Path, pid: int, host: str | None = None) -> None:
    """Write the lock file of a run with ``pid`` on ``host`` (this machine by default)."""
    record = {"pid": pid, "host": host or socket.gethostname(), "started": "2025-01-01T00:00:00+00:00"}
    (out / LOCK).write_text(json.dumps(record))


# --------------------------------------------------------------------------- item 2: whose folder


@pytest.mark.parametrize("command", [report, maps], ids=["report", "maps"])
def test_a_folder_of_other_files_is_refused_and_left_untouched(tmp_path, command: Callable[..., Result]):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "index.html").write_text("my own page")
    (out / "notes.txt").write_text("notes")
    (out / ".keep.tmp").write_text("keep")
    (out / "sub" / f".draft.{OURS}.tmp").write_text("draft")
    before = snapshot(out)
    result = command(out)
    assert result.exit_code == 2, result.output
    [line] = lines(result.stderr)
    assert line.startswith(f"attnviz: error: {out} holds files that attnviz did not write (")
    assert snapshot(out) == before


def test_out_below_a_regular_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    result = report(tmp_path / "file" / "out")
    assert result.exit_code == 2
    assert lines(result.stderr) == [
        f"attnviz: error: cannot create the output folder {tmp_path / 'file' / 'out'}: Not a directory"
    ]
    assert (tmp_path / "file").read_text() == "x"


def test_force_writes_beside_other_files_and_never_replaces_them(tmp_path):
    out = tmp_path / "shared"
    (out / "drafts").mkdir(parents=True)
    (out / "notes.txt").write_text("notes")
    (out / "drafts" / f".plan.{OURS}.tmp").write_text("plan")
    forced = report(out, "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "notes"
    assert (out / "drafts" / f".plan.{OURS}.tmp").read_text() == "plan"
    assert len(json.loads((out / "results.json").read_text())["images"]) == 2
    again = report(out)  # now a folder holding attnviz's report: no --force needed to resume
    assert again.exit_code == 0, again.output
    assert (out / "notes.txt").read_text() == "notes"

    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "results.csv").write_text("my results")
    before = snapshot(clash)
    refused = report(clash, "--force")
    assert refused.exit_code == 2
    assert lines(refused.stderr) == [
        (
            f"attnviz: error: {clash} holds files that attnviz did not write under the names it writes (results.csv); "
            "--force never replaces them: give another --out"
        )
    ]
    assert snapshot(clash) == before


def test_a_rerun_removes_only_its_own_temporary_files(tmp_path):
    out = tmp_path / "report"
    assert report(out).exit_code == 0
    records = sorted((out / "items").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    ours = out / "items" / f".{records[0].name}.{OURS}.tmp"  # left by a write that was killed
    ours.write_text("half")
    foreign = {
        out / "items" / ".keep.tmp": "keep",
        out / ".x.tmp": "x",
        out / "notes" / f".draft.{OURS}.tmp": "draft",  # a folder attnviz did not make
        out / "notes" / ".y.tmp": "y",
    }
    (out / "notes").mkdir()
    for path, text in foreign.items():
        path.write_text(text)
    result = report(out)
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in records] == stamps  # resumed: nothing redone
    assert not ours.exists()
    assert {path: path.read_text() for path in foreign} == foreign

    (out / ".attnviz.json").unlink()  # a report folder of an earlier attnviz, without the marker
    for path in foreign:
        path.unlink()
    (out / "notes").rmdir()
    assert report(out).exit_code == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps and (out / ".attnviz.json").is_file()


def test_maps_with_no_usable_image_leaves_no_folder(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    result = run("maps", "--model", MODELS / "cnn.pth", tmp_path / "text.png", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- item 4: one run per folder


@pytest.mark.parametrize("command", [report, maps], ids=["report", "maps"])
def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path, command: Callable[..., Result]):
    out = tmp_path / "out"
    assert command(out).exit_code == 0
    # another run is at work in the folder: it holds the lock and is writing a file
    hold_lock(out, os.getpid())
    writing = next(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    (writing.parent / f".{writing.name}.{OURS}.tmp").write_text("being written")
    before = snapshot(out)
    result = command(out)
    assert result.exit_code == 2, result.output
    [line] = lines(result.stderr)
    assert line.startswith(
        f"attnviz: error: {out} is in use by another attnviz run (pid {os.getpid()} on {socket.gethostname()}, "
    )
    assert snapshot(out) == before

    hold_lock(out, 1, host="elsewhere.example")  # a run on another machine of a shared file system
    result = command(out)
    assert result.exit_code == 2
    assert "(pid 1 on elsewhere.example, " in result.stderr and f"remove {out / LOCK}" in result.stderr


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path):
    gone = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    out = tmp_path / "out"
    assert report(out).exit_code == 0
    hold_lock(out, gone)
    result = report(out)
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == [
        (
            f"attnviz: warning: took over the lock of {out}: the attnviz run that held it "
            f"(pid {gone} on {socket.gethostname()}, since 2025-01-01T00:00:00+00:00) is gone"
        )
    ]
    assert not (out / LOCK).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="waitid(WNOWAIT) and /proc")
def test_the_lock_of_a_killed_run_not_yet_reaped_is_stale(tmp_path):
    out = tmp_path / "out"
    assert report(out).exit_code == 0
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        killed.kill()
        os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)  # dead, but a zombie: its pid still answers
        hold_lock(out, killed.pid)
        result = report(out)
    finally:
        killed.wait()
    assert result.exit_code == 0, result.output
    assert [line.split(":")[1].strip() for line in lines(result.stderr)] == ["warning"]
    assert f"(pid {killed.pid} on " in result.stderr and not (out / LOCK).exists()


def test_the_lock_is_held_during_a_run_and_released_after_an_error_or_ctrl_c(tmp_path, monkeypatch):
    models = name_models([load_model(MODELS / "cnn.pth")])
    options = ReportOptions(steps=2, sanity_images=0, batch_size=4, pictures=False, progress=False)
    out = tmp_path / "out"
    held = []
    for error in (OSError(28, "No space left on device"), KeyboardInterrupt()):

        def fail(folder, workers=0, error=error):
            held.append(json.loads((out / LOCK).read_text())["pid"])
            raise error

        monkeypatch.setattr(runner, "build_report", fail)
        with pytest.raises(type(error)):
            run_report(models, "shapes:2", out, options)
        assert not (out / LOCK).exists()
    assert held == [os.getpid(), os.getpid()]
    monkeypatch.undo()
    assert run_report(models, "shapes:2", out, options).resumed == 2
    assert not (out / LOCK).exists()


# --------------------------------------------------------------------------- item 3: merged shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    """The two shard folders of an SE model's report on shapes:4, with pictures."""
    root = tmp_path_factory.mktemp("shards")
    folders = []
    for k in (1, 2):
        out = root / f"s{k}"
        result = run(
            "report",
            "--baseline",
            MODELS / "se_cnn.pth",
            "shapes:4",
            "--out",
            out,
            "--steps",
            2,
            "--sanity-images",
            0,
            "--batch-size",
            4,
            "--quiet",
            "--shard",
            f"{k}/2",
        )
        assert result.exit_code == 0, result.output
        folders.append(out)
    return folders


def _first_record(shard: Path) -> Path:
    return min((shard / "items").glob("*.json"))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _picture(name: str) -> Callable[[Path, Path], None]:
    def tamper(shard: Path, root: Path) -> None:
        (root / "shards" / "conftest.py").write_text("print('pwned')")
        _edit_json(_first_record(shard), lambda r: r["pictures"].__setitem__("image", name.format(root=root)))

    return tamper


def _symlink(shard: Path, root: Path) -> None:
    (root / "secret.txt").write_text("secret")
    picture = shard / json.loads(_first_record(shard).read_text())["pictures"]["image"]
    picture.unlink()
    picture.symlink_to(root / "secret.txt")


def _slug(shard: Path, root: Path) -> None:
    for folder in (shard, shard.parent / "s2"):
        _edit_json(folder / "run.json", lambda r: r["models"][0].__setitem__("slug", "../../x"))


def _manifest_id(shard: Path, root: Path) -> None:
    record = json.loads(_first_record(shard).read_text()) | {"id": "../../y"}
    (shard / "items" / "../../y.json").write_text(json.dumps(record))
    manifest = shard / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["id"] = "../../y"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize(
    "tamper",
    [_picture("../conftest.py"), _picture("{root}/shards/conftest.py"), _symlink, _slug, _manifest_id],
    ids=["picture-dotdot", "picture-absolute", "picture-symlink", "model-slug", "manifest-id"],
)
@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_shard_naming_paths_outside_its_folder_is_refused(shards, tmp_path, tamper):
    copies = []
    for shard in shards:
        copies.append(tmp_path / "shards" / shard.name)
        shutil.copytree(shard, copies[-1], symlinks=True)
    tamper(copies[0], tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "merged"
    result = run("report", "--merge", *copies, "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    [line] = lines(result.stderr)
    assert line.startswith(f"attnviz: error: refusing shard {copies[0]}: ")
    assert snapshot(tmp_path) == before  # nothing written, inside --out or outside it
    assert not out.exists()


def test_untampered_shards_still_merge(shards, tmp_path):
    result = run("report", "--merge", *shards, "--out", tmp_path / "merged", "--quiet")
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "merged" / "results.json").read_text())["images"]) == 4
    assert not (tmp_path / "merged" / LOCK).exists()
    # what attnviz knows it writes at the top of a report folder (--force checks these names) is complete
    from attnviz.report.records import REPORT_NAMES

    assert set(os.listdir(tmp_path / "merged")) - {".attnviz.json"} <= REPORT_NAMES
    assert {"images", "cam", "bars", "figures", "arrays", "items"} <= set(os.listdir(tmp_path / "merged"))
