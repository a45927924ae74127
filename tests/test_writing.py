"""dltool.store.writing: atomic writes and appends that leave no temp file and no torn line, and the one
line a refused write becomes."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading

import pytest

from dltool.errors import ConfigError, Unwritable
from dltool.store.writing import append_synced, refusal, replace_atomically, write_atomic, write_output


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_refused_write_keeps_the_old_file_removes_the_temp_file_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(Unwritable) as info:
        write_atomic(target, "new\n")
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {target}: no space left on device; free some space there, or write elsewhere"
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_write_stopped_midway_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    seen = []

    def half_then_interrupted(handle):
        seen.append(os.path.basename(os.readlink(f"/proc/self/fd/{handle.fileno()}")))
        handle.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(target, half_then_interrupted)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert seen[0].startswith(".last.pt.") and seen[0].endswith(".tmp")  # what remove_stale_temps removes


def test_a_fifo_in_the_way_is_replaced_never_opened(tmp_path):
    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)
    writer = threading.Thread(target=write_atomic, args=(fifo, "{}\n"), daemon=True)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive(), "the writer opened the FIFO and waits for a reader"
    assert stat.S_ISREG(os.lstat(fifo).st_mode) and fifo.read_text() == "{}\n"


def test_an_append_cut_short_by_a_full_disk_is_cut_back_to_the_last_whole_line(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    append_synced(target, "epoch,loss\n1,0.5\n")
    real = os.write

    def half_then_full(fd, data):
        if len(data) > 3:
            return real(fd, bytes(data[:3]))  # part of the row reaches the disk, then it is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(Unwritable, match="no space left on device"):
        append_synced(target, "2,0.25\n")
    monkeypatch.undo()
    assert target.read_text() == "epoch,loss\n1,0.5\n"


@pytest.mark.parametrize("code, advice", [
    (errno.EROFS, "write to a folder on a writable file system"),
    (errno.EACCES, "write to a folder you have write permission on"),
    (errno.ENAMETOOLONG, "choose a shorter name"),
])
def test_each_refusal_says_what_to_do(code, advice):
    assert refusal("runs/x", OSError(code, os.strerror(code))) == f"cannot write runs/x: {os.strerror(code).lower()}; {advice}"


def fake_run(folder):
    """A run folder as dltool lays it out, by its files."""
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        (folder / name).write_text("run\n")
    return folder


def test_an_output_never_replaces_a_runs_files_its_input_or_a_checkpoint(tmp_path, make_checkpoint):
    run = fake_run(tmp_path / "runs" / "x")
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "config.yaml", "summary.json"):
        with pytest.raises(ConfigError) as info:
            write_output(run / name, b"onnx")
        assert str(info.value) == (f"--out: {run / name} is a file of the run folder {run}, which dltool never "
                                   "replaces; write to another file")
        assert (run / name).read_text() == "run\n"
    assert write_output(run / "model.onnx", b"1") == run / "model.onnx"
    assert write_output(run / "model.onnx", b"2").read_bytes() == b"2"  # an earlier export of the same kind
    config = tmp_path / "c.yaml"
    config.write_text("data: {}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is this command's own input; write to another file$"):
        write_output(tmp_path / "." / "c.yaml", b"png", inputs=[config])
    checkpoint = make_checkpoint([{"Flatten": {}}, {"Linear": {"out_features": 10}}])
    with pytest.raises(ConfigError) as info:
        write_output(checkpoint, b"onnx")
    assert str(info.value) == f"--out: {checkpoint} is a checkpoint, which dltool never replaces; write to another file"


def test_a_fifo_or_device_node_is_refused_and_left_as_it_is(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        write_output(fifo, b"png")
    assert str(info.value) == (f"--out: {fifo} is a FIFO (named pipe), not a file; dltool writes only regular "
                               "files (or into /dev/stdout); choose a file path")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    with pytest.raises(ConfigError, match=r"to-null \(a link to /dev/null\) is a character device, not a file"):
        write_output(link, b"png")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device node needs root")
def test_a_device_node_made_with_mknod_is_never_replaced(tmp_path):
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(ConfigError, match=r"null is a character device, not a file"):
        write_output(node, b"onnx")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_a_symlink_is_followed_and_its_target_replaced_in_its_own_folder(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "plot.png"
    target.write_bytes(b"old")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "plot.png"
    link.symlink_to(target)
    assert write_output(link, b"new") == target
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert [p.name for p in (tmp_path / "links").iterdir()] == ["plot.png"]
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["plot.png"]
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(Unwritable, match=r"loop: too many levels of symbolic links; its symlinks form a loop"):
        write_output(loop, b"x")


def test_stdout_is_written_into_and_a_missing_folder_is_made(tmp_path, capfd):
    write_output("/dev/stdout", b"picture bytes\n")
    assert capfd.readouterr().out == "picture bytes\n"
    assert write_output(tmp_path / "no" / "dir" / "x.png", b"x").read_bytes() == b"x"
    with pytest.raises(Unwritable, match=r"^cannot write /proc/x.png: its folder takes no new files; write elsewhere$"):
        write_output("/proc/x.png", b"x")


def test_export_out_onto_the_runs_own_checkpoint_or_a_device_is_one_line(tmp_path, digits_run):
    from typer.testing import CliRunner

    from dltool.cli import app

    run = tmp_path / "x"
    shutil.copytree(digits_run, run)
    best = run / "checkpoints" / "best.pt"
    before = best.read_bytes()
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(best)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --out: {best} is this command's own input; write to another file"
    for out in (run / "checkpoints" / "last.pt", run / "metrics.csv"):
        result = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (f"error: --out: {out} is a file of the run folder {run}, which dltool "
                                         "never replaces; write to another file")
    assert best.read_bytes() == before
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(fifo)])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("fifo.onnx is a FIFO (named pipe), not a file; dltool writes only "
                                          "regular files (or into /dev/stdout); choose a file path")
