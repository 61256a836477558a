"""Artifact store on local disk, content-addressed by sha256: the bytes devices download in chunks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fleet_protocol.signing import sha256_file


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def new_upload(self) -> Path:
        """A fresh temporary file under the store (same filesystem, so adding it later is a rename)."""
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        os.close(fd)
        return Path(tmp)

    def add(self, tmp: Path) -> str:
        """Move a verified file into place; returns its digest. Re-adding the same bytes is a no-op."""
        digest = sha256_file(tmp)
        dest = self.path(digest)
        dest.parent.mkdir(exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, dest)
        return digest

    def read_chunk(self, sha256: str, index: int, chunk_size: int) -> bytes:
        with open(self.path(sha256), "rb") as f:
            f.seek(index * chunk_size)
            return f.read(chunk_size)
