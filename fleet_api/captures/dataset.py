"""A dataset of captured samples as one streamed ZIP: the data files, and their provisional labels as JSON and CSV.

    data/{device}/{sample id}.jpg|.npy   the samples as the devices sent them
    labels.json                          a list: each sample's header (model, version, reason, outputs, …) and file
    labels.csv                           the same, a row each; `outputs` as a JSON string

The ZIP is written as it is read (zipfile on a stream it cannot seek: sizes go in data descriptors), a file at a
time, so neither the API nor the client ever holds the whole dataset.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .store import CaptureStore, Filters

COLUMNS = ("id", "file", "device_id", "sample_id", "model", "version", "camera", "taken_at", "reason", "confidence",
           "shadow_version", "content_type", "width", "height", "faces_blurred", "size", "sha256", "outputs")
READ_BYTES = 1024 * 1024


class _Pipe(io.RawIOBase):
    """A write-only stream whose bytes the generator below hands out as they come (no seek, no tell)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def label(entry: dict[str, Any]) -> dict[str, Any]:
    """One sample's entry in labels.json: its header and its file inside the ZIP."""
    return {**{k: v for k, v in entry.items() if k != "file"}, "file": f"data/{entry['file']}",
            "taken_at": entry["taken_at"].isoformat(), "received_at": entry["received_at"].isoformat()}


def stream(store: CaptureStore, filters: Filters) -> Iterator[bytes]:
    pipe = _Pipe()
    labels: list[dict[str, Any]] = []
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for entry, path in store.iter_matching(filters):
            if not path.is_file():
                continue  # deleted meanwhile: left out of the labels as well
            item = label(entry)
            _copy(z, path, item["file"])
            labels.append(item)
            yield pipe.take()
        z.writestr("labels.json", json.dumps(labels, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("labels.csv", _csv(labels), compress_type=zipfile.ZIP_DEFLATED)
    yield pipe.take()


def _copy(z: zipfile.ZipFile, path: Path, name: str) -> None:
    with open(path, "rb") as src, z.open(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), "w",
                                         force_zip64=True) as dst:
        while chunk := src.read(READ_BYTES):
            dst.write(chunk)


def _csv(labels: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for item in labels:
        writer.writerow({**item, "outputs": json.dumps(item["outputs"], separators=(",", ":"))})
    return out.getvalue()
