"""What the book runner's modules share: its errors, and how it writes a path into its messages and outputs."""
from __future__ import annotations

from pathlib import Path

from causal_lib.config import PROJECT_ROOT


class BookError(RuntimeError):
    """A chapter failed or the run folder cannot be used; the message says which and what to do."""


class BookInterrupted(BookError):
    """Ctrl-C: the chapter and its kernel were stopped; the message names the chapter and the --resume command."""


def relative_to_project(path: Path | str) -> str:
    """A path as written into outputs: relative to the project root when inside it (the kernels run there)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(p)
