"""Files written whole or not at all: a temporary sibling, flushed to disk, renamed into place.

Bundles, the device's model store and state, captured samples on either side, keys: a reader, a restart or a
power cut finds the old file or the new one, never half of one. The one place this is done, so every writer
gets the same care (the temporary file is removed on any failure; `durable` also syncs the directory, without
which a power cut may undo the rename).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: it replaces `path` when the block ends without an error, and is
    removed otherwise. Owner-only permissions (0600), like every temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_file(path, durable=durable) as f:
        f.write(data)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems cannot sync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
