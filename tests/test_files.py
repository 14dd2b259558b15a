"""Atomic writes: all or nothing, with the permissions of any new file."""

from __future__ import annotations

import os

import pytest

from attnviz.runtime.files import atomic_file, write_bytes


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    write_bytes(target, b"old")
    write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(target.parent) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "attention.npz"
    write_bytes(target, b"finished")
    with pytest.raises(RuntimeError), atomic_file(target) as file:
        file.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"finished"
    assert os.listdir(tmp_path) == ["attention.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_files_get_the_permissions_of_any_new_file(tmp_path):
    previous = os.umask(0o027)
    try:
        path = write_bytes(tmp_path / "index.html", b"<html>")
        with atomic_file(tmp_path / "results.csv", "w") as file:
            file.write("id\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "results.csv").read_text() == "id\n"


def test_a_ctrl_c_right_after_the_temporary_is_created_removes_it(tmp_path, monkeypatch):
    import attnviz.runtime.files as files

    real_open = os.open

    def open_then_interrupted(*args, **kwargs):
        os.close(real_open(*args, **kwargs))  # the file exists; the interrupt comes before its handle is kept
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes(tmp_path / "out.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_a_file_already_at_the_temporary_name_is_left_alone(tmp_path, monkeypatch):
    import attnviz.runtime.files as files

    other = tmp_path / ".out.json.0123456789ab.tmp"
    other.write_bytes(b"not attnviz's")
    monkeypatch.setattr(files, "temporary_sibling", lambda path: other)
    with pytest.raises(FileExistsError):
        write_bytes(tmp_path / "out.json", b"{}")
    assert other.read_bytes() == b"not attnviz's" and not (tmp_path / "out.json").exists()
