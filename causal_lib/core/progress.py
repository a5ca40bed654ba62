"""Progress lines from long loops to the book's console.

The book runner names a file in the environment variable CAUSAL_PI_PROGRESS (outputs/<run>/logs/progress_<chapter>.log)
before it starts a chapter's kernel; `report(msg)` appends one line to it, and the runner prints the new lines
while the chapter runs (plus a heartbeat when nothing new comes). Outside the book (tests, the CLIs, JupyterLab)
the variable is unset and `report` does nothing.

Standard library only, and nothing from causal_lib: any layer may import it without an import cycle.
"""
from __future__ import annotations

import os
import time

ENV = "CAUSAL_PI_PROGRESS"

_last = {}  # key -> time of its last written line


def report(msg: str, every: float = 10.0, key: str | None = None, force: bool = False) -> bool:
    """Append `msg` as one line to the progress file, at most once per `every` seconds per `key` (default: the
    caller's first word of `msg`) unless `force`. Returns whether a line was written. Never raises."""
    path = os.environ.get(ENV)
    if not path:
        return False
    key = key if key is not None else (msg.split(" ", 1)[0] if msg else "")
    now = time.monotonic()
    if not force and now - _last.get(key, -1e18) < every:
        return False
    _last[key] = now
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(" ".join(str(msg).split()) + "\n")
        return True
    except OSError:
        return False


def eta(done: int, total: int, elapsed: float) -> str:
    """'3/10, 12 s elapsed, ETA 28 s' for a loop `done` of `total` after `elapsed` seconds."""
    left = (total - done) * elapsed / done if done else None
    return f"{done}/{total}, {duration(elapsed)} elapsed" + (f", ETA {duration(left)}" if left is not None else "")


def duration(s: float) -> str:
    """A duration for a console line, to the nearest second: '7 s', '3m05s', '2h04m' (no seconds past an hour)."""
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s} s"
