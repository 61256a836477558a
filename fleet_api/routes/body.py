"""Reading a request body to a file: bounded in size, and in time between blocks.

A client that declares a length and then stalls would hold the request (and a spooled file) forever: every
read has a deadline (`Stalled`). A client that goes away mid-body leaves one log line, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from starlette.requests import ClientDisconnect, Request

from ..errors import TooLarge

log = logging.getLogger(__name__)


class Stalled(Exception):
    """No data arrived within the idle timeout."""


async def spool(request: Request, path: Path, limit: int, idle_s: float) -> int | None:
    """Write the body to `path` as it arrives. → bytes written, or None when the client disconnected.
    Raises TooLarge past `limit` bytes and Stalled when no block came for `idle_s` (both logged in one line)."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "?"
    declared = request.headers.get("content-length") or "?"
    total = 0
    with open(path, "wb") as out:
        blocks = request.stream().__aiter__()
        while True:
            try:
                block = await asyncio.wait_for(blocks.__anext__(), idle_s)
            except StopAsyncIteration:
                return total
            except TimeoutError:
                log.warning("upload from %s cut off: no data for %gs after %d of %s bytes", client, idle_s, total, declared)
                raise Stalled(f"upload stalled: no data for {idle_s:g}s") from None
            except ClientDisconnect:
                log.warning("upload from %s aborted: the client disconnected after %d of %s bytes", client, total, declared)
                return None
            total += len(block)
            if total > limit:
                raise TooLarge(f"bundle exceeds the {limit}-byte limit")
            out.write(block)
