"""Logging of unexpected errors: a traceback once per kind, not once per request.

A bug that every request hits would otherwise write a traceback per request, and anyone able
to send that request could fill the disk with them. The first of each kind (exception type
and where it was raised) is logged whole; repeats only count, logged at powers of ten.
"""

from __future__ import annotations

import logging
import traceback

from app.errors import InternalError

log = logging.getLogger("batchserve")

_seen: dict[tuple[str, str], int] = {}


def log_unexpected(exc: BaseException, context: str) -> InternalError:
    """Log `exc` (a bug) as described above; the error the client should get instead."""
    frames = traceback.extract_tb(exc.__traceback__)
    origin = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    kind = (type(exc).__name__, origin)
    count = _seen.get(kind, 0) + 1
    _seen[kind] = count
    if count == 1:
        log.error("unexpected error in %s", context, exc_info=exc)
    elif count in (10, 100, 1_000, 10_000, 100_000) or count % 1_000_000 == 0:
        log.error("unexpected %s at %s seen %d times (traceback logged once)", *kind, count)
    return InternalError("internal server error; the server's log has the details")
