"""atomic_write: the old file or the new one, never half of one, and no temporary file left behind."""

from __future__ import annotations

import stat

import pytest

from fleet_protocol.files import atomic_file, atomic_write


def test_a_write_replaces_the_file_whole_and_owner_only(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two", durable=False)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "bundle"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk gone")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
