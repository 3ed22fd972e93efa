"""The CLI and the file reader on hostile paths: special files, huge files, outputs that must not be
replaced; the exit-code convention; atomic saves leave nothing behind (issue 15, item 4)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_corrupt import BASE

import mrcformat as m
from mrcformat import atomic
from mrcformat.errors import BadMagicError, LimitError, ReadError
from mrcformat.fileread import read_file
from mrcformat.cli import main, parse_bytes

POSIX = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "pipe.mrc"
    os.mkfifo(p)
    return p


def _cli_subprocess(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A real process (not CliRunner), so a blocking open or an endless read would time out."""
    return subprocess.run([sys.executable, "-m", "mrcformat.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@POSIX
@pytest.mark.parametrize("command", ["info", "validate", "decode"])
def test_character_device_and_fifo_inputs_are_refused(command, fifo, tmp_path):
    out = ["-o", str(tmp_path / "o.npz")] if command == "decode" else []
    for path, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO")):
        p = _cli_subprocess(command, path, *out)  # /dev/zero used to read until MemoryError, a FIFO forever
        assert p.returncode == 2, p
        report = p.stdout if command == "validate" else p.stderr  # validate lists problems on stdout
        assert "Traceback" not in p.stderr and kind in report and "read-error" in report
        assert len(report.strip().splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()


def test_directory_and_missing_inputs_exit_2(tmp_path):
    one_line_error(run("info", tmp_path), 2, "a directory")
    one_line_error(run("info", tmp_path / "nope.mrc"), 2, "read-error", "No such file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_error_exits_2_like_a_missing_file(tmp_path):
    p = tmp_path / "secret.mrc"
    p.write_bytes(BASE)
    p.chmod(0)
    one_line_error(run("info", p), 2, "Permission denied")


def test_invalid_file_exits_1(tmp_path):
    p = tmp_path / "bad.mrc"
    p.write_bytes(BASE + b"\0")
    one_line_error(run("info", p), 1, "trailing-bytes")
    p.write_bytes(b"\x08\x07" + BASE[2:])
    one_line_error(run("info", p), 1, "bad-magic", "ONNX model")


def test_help_documents_the_exit_codes():
    text = run("--help").stdout
    for needle in ("Exit status", "0  success", "1  an invalid file", "2  a usage or I/O error"):
        assert needle in text, text
    assert "--max-decoded-bytes" in run("info", "--help").stdout


# ------------------------------------------------------------------------------------------ reading


def test_preamble_is_checked_before_the_rest_is_read(tmp_path):
    """A huge sparse file: with a wrong magic only its 24-byte preamble is read; with the right magic it
    is refused by size (budget) before its content is read."""
    p = tmp_path / "huge.bin"
    with open(p, "wb") as f:
        f.truncate(64 << 30)  # 64 GiB, no blocks on disk
    assert read_file(p) == b"\0" * 24
    with pytest.raises(BadMagicError):
        m.load(p)
    with open(p, "r+b") as f:
        f.write(BASE[:24])
    with pytest.raises(LimitError) as e:
        m.load(p)
    assert "budget" in str(e.value)
    one_line_error(run("info", p), 1, "limit", "budget")


def test_file_over_the_budget_is_refused_and_the_budget_can_be_raised(tmp_path):
    p = tmp_path / "good.mrc"
    p.write_bytes(BASE)
    with pytest.raises(LimitError):
        m.load(p, max_decoded_bytes=len(BASE) - 1)
    assert m.load(p, max_decoded_bytes=len(BASE)).tensors
    one_line_error(run("info", "--max-decoded-bytes", "100B", p), 1, "budget")
    assert run("info", "--max-decoded-bytes", "1MiB", p).exit_code == 0
    assert run("info", "--max-decoded-bytes", "none", p).exit_code == 0
    r = run("info", "--max-decoded-bytes", "lots", p)  # a usage error: click's usage message, exit 2
    assert r.exit_code == 2 and "not a size" in r.stderr and "Traceback" not in r.output


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("1.5 MB") == 1_500_000 and parse_bytes("4096") == 4096
    assert parse_bytes("none") is None and parse_bytes("64k") == 64_000
    for bad in ("-1", "1XB", "", "nan"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


@POSIX
def test_library_loaders_refuse_special_files(fifo):
    for path in ("/dev/zero", fifo):
        with pytest.raises(ReadError):
            m.load(path)
        problems = m.validate_file(path)
        assert len(problems) == 1 and isinstance(problems[0], ReadError)


# ------------------------------------------------------------------------------------------ outputs


@POSIX
def test_output_symlink_and_devices_are_not_replaced(tmp_path, fifo):
    src = tmp_path / "good.mrc"
    src.write_bytes(BASE)
    target = tmp_path / "target.npz"
    target.write_bytes(b"keep")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    for out, kind in ((link, "symbolic link"), (fifo, "FIFO"), (tmp_path, "directory")):
        one_line_error(run("decode", src, "-o", out), 2, "cannot write", kind)
    assert link.is_symlink() and target.read_bytes() == b"keep" and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # a character device: /dev/null must stay a device (as root it used to be replaced by a file)
    before = os.lstat("/dev/null")
    one_line_error(run("decode", src, "-o", "/dev/null"), 2, "character device")
    with pytest.raises(OSError):
        m.save(m.from_bytes(BASE), "/dev/null")
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


# ------------------------------------------------------------------------------------------ atomic


def test_failed_save_leaves_no_temp_file(tmp_path):
    dst = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(dst) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_killed_save_leaves_a_temp_that_the_next_save_removes(tmp_path):
    dst = tmp_path / "x.bin"
    code = ("import os, sys; from mrcformat.atomic import atomic_open\n"
            f"cm = atomic_open({str(dst)!r}); f = cm.__enter__(); f.write(b'partial'); f.flush(); os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(atomic.TEMP_SUFFIX)]
    assert len(stale) == 1 and not dst.exists()
    # a temp of a live process (ours) for another name, and an unrelated file, are left alone
    mine = tmp_path / f".other.bin.{os.getpid()}.abc{atomic.TEMP_SUFFIX}"
    mine.write_bytes(b"")
    (tmp_path / "unrelated.txt").write_bytes(b"")
    atomic.atomic_write_bytes(dst, b"new")
    assert dst.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "unrelated.txt", "x.bin"])


def test_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def spy(fd):
        calls.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    atomic.atomic_write_bytes(tmp_path / "y.bin", b"data")
    assert calls == [False, True]  # the file, then its folder


@POSIX
def test_compress_refuses_a_device_as_model(tmp_path):
    pytest.importorskip("onnxruntime")
    r = run("compress", "/dev/zero", "--budget", "1KiB", "--calibration", tmp_path, "-o", tmp_path / "o.mrc")
    one_line_error(r, 2, "character device")
