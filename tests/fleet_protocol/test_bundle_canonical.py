"""Issue 12 #8: a bundle's bytes are exactly what its signature covers.

A copy with bytes after the archive, without its end-of-archive blocks, or with a header field changed used to
verify: it was registered (201) under the version, served, and the genuine file was then refused with 409.
"""

from __future__ import annotations

import tarfile

import pytest

from fleet_protocol.bundle import BundleError, read_bundle, write_bundle
from fleet_protocol.signing import sha256_file


def _members_end(path) -> int:
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + last.size + (-last.size % tarfile.BLOCKSIZE)


def _refused(keys, path, tmp_path, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        read_bundle(path, [keys.public], extract_to=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_genuine_bundle_is_canonical_and_repacks_to_the_same_bytes(keys, bundles, tmp_path):
    verified = read_bundle(bundles["1.0.0"], [keys.public], extract_to=tmp_path / "x")
    files = {name: (tmp_path / "x" / name).read_bytes() for name in verified.manifest.files}
    again = tmp_path / "again.bundle"
    write_bundle(again, verified.manifest, files, keys.private)
    assert sha256_file(again) == sha256_file(bundles["1.0.0"])


def test_a_bundle_with_bytes_after_the_archive_is_refused(keys, bundles, tmp_path):
    doctored = tmp_path / "doctored.bundle"
    doctored.write_bytes(bundles["1.0.0"].read_bytes() + b"not signed by anyone")
    _refused(keys, doctored, tmp_path, "after the end of the archive")


def test_a_bundle_with_a_whole_extra_record_of_zeros_is_refused(keys, bundles, tmp_path):
    doctored = tmp_path / "doctored.bundle"
    doctored.write_bytes(bundles["1.0.0"].read_bytes() + bytes(tarfile.RECORDSIZE))
    _refused(keys, doctored, tmp_path, "after the end of the archive")


def test_a_bundle_missing_its_end_of_archive_blocks_is_refused(keys, bundles, tmp_path):
    doctored = tmp_path / "doctored.bundle"
    doctored.write_bytes(bundles["1.0.0"].read_bytes()[: _members_end(bundles["1.0.0"])])
    with tarfile.open(doctored) as tar:  # tarfile itself reads it without complaint
        assert len(tar.getmembers()) >= 3
    _refused(keys, doctored, tmp_path, "end-of-archive blocks are missing")


def test_a_bundle_with_a_changed_header_field_is_refused(keys, bundles, tmp_path):
    data = bytearray(bundles["1.0.0"].read_bytes())
    # The first member's mtime (octal field at 136..148), and its checksum made right again: still a valid tar.
    data[136:148] = b"00000000001\0"
    data[148:156] = b"        "
    data[148:156] = b"%06o\0 " % sum(data[:512])
    doctored = tmp_path / "doctored.bundle"
    doctored.write_bytes(bytes(data))
    with tarfile.open(doctored) as tar:
        assert tar.getmembers()[0].mtime == 1
    _refused(keys, doctored, tmp_path, "header of manifest.json differs")


def test_a_bundle_with_data_in_the_padding_is_refused(keys, bundles, tmp_path):
    data = bytearray(bundles["1.0.0"].read_bytes())
    with tarfile.open(bundles["1.0.0"]) as tar:
        first = tar.getmembers()[0]
    assert first.size % tarfile.BLOCKSIZE  # the manifest does not end on a block: there is padding to fill
    data[first.offset_data + first.size] = 0x41
    doctored = tmp_path / "doctored.bundle"
    doctored.write_bytes(bytes(data))
    _refused(keys, doctored, tmp_path, "padding")


def test_bundles_packed_by_tarfile_before_this_rule_are_still_accepted(keys, bundles, tmp_path):
    """Bundles made by the earlier write_bundle (tarfile, PAX format) are the canonical form byte for byte."""
    import io

    from fleet_protocol.bundle import _tarinfo

    with tarfile.open(bundles["1.0.0"]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    old = tmp_path / "old.bundle"
    with open(old, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    assert old.read_bytes() == bundles["1.0.0"].read_bytes()
    read_bundle(old, [keys.public])
