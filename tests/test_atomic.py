"""atomic_write: the destination is the old file or the new one, never a partial one."""

import pytest

from mvssl_core.atomic import atomic_write


def test_writes_text_and_binary_and_creates_the_folder(tmp_path):
    p = atomic_write(tmp_path / "a" / "b.txt", lambda f: f.write("héllo\n"))
    assert p.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"\x00\x01"), binary=True)
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "c.bin"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")

    def half_then_fail(f):
        f.write("new but incompl")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]
