"""landslide_cli.safety: staged writes, stale temporaries, target checks, first lines."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys

import pytest

from landslide_cli.errors import LandslideError
from landslide_cli.safety import (
    Staged,
    atomic_write,
    check_distinct,
    check_target,
    first_line,
    pid_alive,
    remove_stale_temps,
    same_file,
    sha256_file,
    temp_path,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_path_is_hidden_beside_the_target_and_names_this_process(tmp_path):
    t = temp_path(tmp_path / "a.gpkg", ".tmp.gpkg")
    assert t.parent == tmp_path and t.name.startswith(f".a.gpkg.{os.getpid()}-")
    assert t.name.endswith(".tmp.gpkg") and t != temp_path(tmp_path / "a.gpkg", ".tmp.gpkg")


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = _dead_pid()
    assert not pid_alive(dead) and pid_alive(os.getpid())
    stale = [tmp_path / f".a.gpkg.{dead}-0123abcd.tmp.gpkg",
             tmp_path / f".a.gpkg.{dead}-0123abcd.tmp.gpkg-journal"]
    live = tmp_path / f".a.gpkg.{os.getpid()}-89abcdef.tmp.gpkg"
    other_target = tmp_path / f".a.gpkg.old.{dead}-0123abcd.tmp"  # belongs to "a.gpkg.old"
    foreign = tmp_path / ".a.gpkg.notes"  # not one of ours
    for p in [*stale, live, other_target, foreign]:
        p.write_bytes(b"x")
    removed = remove_stale_temps(tmp_path / "a.gpkg")
    assert sorted(removed) == sorted(stale)
    assert live.exists() and other_target.exists() and foreign.exists()
    assert not any(p.exists() for p in stale)


def test_atomic_write_publishes_whole_files_only(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")

    def half_then_full_disk(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(LandslideError, match=r"cannot write .*m.json: No space left on device"):
        atomic_write(target, half_then_full_disk)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda tmp: (tmp.write_text("x"), (_ for _ in ()).throw(
            KeyboardInterrupt()))[0])
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1
    assert (target.stat().st_mode & 0o777) != 0o600  # the umask's mode, not mkstemp's


def test_staged_commit_and_cleanup(tmp_path):
    s = Staged(tmp_path / "q.png", ".tmp.png")
    s.tmp.write_bytes(b"png")
    (tmp_path / (s.tmp.name + ".aux.xml")).write_text("side car")
    s.commit()
    assert (tmp_path / "q.png").read_bytes() == b"png"
    assert [p.name for p in tmp_path.iterdir()] == ["q.png"]
    s2 = Staged(tmp_path / "q.png")
    with pytest.raises(LandslideError, match="nothing was written"):
        s2.commit()
    with pytest.raises(RuntimeError), Staged(tmp_path / "q.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert (tmp_path / "q.png").read_bytes() == b"png" and len(list(tmp_path.iterdir())) == 1


def test_check_target_refuses_inputs_even_with_overwrite(tmp_path):
    scene = tmp_path / "s.tif"
    scene.write_bytes(b"scene")
    link = tmp_path / "link.tif"
    link.symlink_to(scene)
    for target in (scene, link, tmp_path / "." / "s.tif"):
        with pytest.raises(LandslideError, match="is an input of this run"):
            check_target(target, overwrite=True, inputs=[scene])
    with pytest.raises(LandslideError, match="already exists"):
        check_target(scene, overwrite=False)
    with pytest.raises(LandslideError, match=r"expected a \.png file name"):
        check_target(tmp_path / "q.jpg", overwrite=False, suffixes=(".png",))
    with pytest.raises(LandslideError, match="is a folder"):
        check_target(tmp_path, overwrite=True)
    with pytest.raises(LandslideError, match="does not exist"):
        check_target(tmp_path / "no" / "x.png", overwrite=False)
    assert check_target(tmp_path / "new.png", overwrite=False) == tmp_path / "new.png"
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["link.tif", "s.tif"]  # no probe


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write in read-only folders")
def test_check_target_probes_writability(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(LandslideError, match="cannot write in"):
            check_target(ro / "x.gpkg", overwrite=False)
    finally:
        ro.chmod(0o700)


def test_check_distinct_and_same_file(tmp_path):
    a = tmp_path / "a.tif"
    assert same_file(a, tmp_path / "x" / ".." / "a.tif")
    check_distinct([("output", a), ("--prob-out", None), ("--quicklook", tmp_path / "b.png")])
    with pytest.raises(LandslideError, match="are the same file"):
        check_distinct([("output", a), ("--prob-out", tmp_path / "./a.tif")])


def test_first_line_and_sha256(tmp_path):
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(IsADirectoryError(21, "Is a directory", "x")) == "Is a directory"
    try:
        try:
            raise OSError("GDAL: specific reason\nmore")
        except OSError as inner:
            raise RuntimeError("generic wrapper") from inner
    except RuntimeError as exc:
        assert first_line(exc) == "GDAL: specific reason"
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert sha256_file(p, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
