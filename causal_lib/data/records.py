"""The data set's records: `Record` (one example, validated on construction), the split and file names,
the data errors, and reading/writing the jsonl splits (`load_split`, `load_dataset`, `write_split`)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from causal_lib.data import injections, world
from causal_lib.models.tokens import SPECIAL_TOKENS

SCHEMA_VERSION = 1


SPLITS = ("train", "val", "test")


FILES = ("base_corpus", "train", "val", "test")  # file stems under the data folder


KINDS = ("base", "clean", "injected", "lookalike", "probe_system", "probe_data")


CUSTOM = "custom"  # goal of an attack with its own instruction and judge; task of a user's own document
# task of a realistic instruction item (data/realistic.py: an instruction with an input, open-ended answer): its
# answer is not scored by exact match (scoring.is_correct -> None); its utility is reference-based (ROUGE-L)
REALISTIC = "realistic"


JUDGES = ("canary", "starts_with", "regex")  # judges of custom attacks (data.scoring.judge_passes)


ANSWER_MATCHES = ("exact", "contains")  # how a user document's ideal answer is matched (scoring.is_correct)


# Fields that label a record in tables, reports and console lines: printable text only (Record.validate)
_LABELS = ("id", "pair_id", "family", "goal", "position", "template_id", "source", "judge", "instruction_type",
           "novel")


# Optional fields written only when set (so that the world's files stay byte-identical to schema 1's)
_OMIT_WHEN_NONE = ("judge", "instruction_type", "answer_match", "novel")


BUILT_BY = "chapter 02_dataset_validation (python -m causal_lib.book run --params <params> --from 02) or causal_lib.data.build.ensure_dataset(cfg, paths)"


def unprintable(text) -> str | None:
    """The first character of `text` a terminal or a Markdown viewer would not show as itself: control
    characters (ESC of ANSI sequences, newlines, DEL, C1), bidi and other format characters (U+202E, U+2066,
    zero-width), line/paragraph separators, surrogates, private-use and unassigned code points; None if none."""
    return next((c for c in str(text) if not c.isprintable()), None)


def printable(text) -> str:
    """`text` with every character unprintable() names written as its escape (\\x1b, \\u202e, \\n), so a
    label from a file (family, instruction_type, id) can be printed or written into a report as is."""
    text = str(text)
    if unprintable(text) is None:
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def char_name(c: str) -> str:
    """'U+001B' style name of one character, for error messages."""
    return f"U+{ord(c):04X}"


class DataError(ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


class DatasetMissingError(DataError, FileNotFoundError):
    """A split file is not there: the message says which chapter builds it."""


@dataclass
class Record:
    id: str
    pair_id: str
    split: str
    kind: str
    task: str
    system: str
    data: str
    clean_data: str
    target: str
    family: str | None = None
    goal: str | None = None
    position: str | None = None
    injection: str | None = None
    injected_target: str | None = None
    held_out: bool = False
    template_id: str | None = None
    source: str = "builtin"
    # custom attacks (goal="custom"): the judge's name; injected_target holds its argument (canary, prefix, regex)
    judge: str | None = None
    instruction_type: str | None = None  # custom attacks: the instruction's type (e.g. spikee's "xss")
    answer_match: str | None = None  # a user document (task="custom"): exact | contains; None = no ideal answer
    # test items: the held-out content axes the item uses, comma-joined in world.CONTENT_AXES order
    # ("phrasing,payload"); the wrapper family's axis is held_out
    novel: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in _OMIT_WHEN_NONE:
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        """Build and validate; raises ValueError saying which field is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} (schema version {SCHEMA_VERSION})")
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        r = cls(**d)
        r.validate()
        return r

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "held_out":
                if not isinstance(v, bool):
                    raise ValueError(f"held_out must be true/false, got {v!r}")
            elif f.name == "target" and self.task == CUSTOM:
                if not isinstance(v, str):  # a user document without an ideal answer: ""
                    raise ValueError(f"target must be a string, got {v!r}")
            elif f.default is dataclasses.MISSING or f.name == "source":
                if not isinstance(v, str) or not v.strip():
                    raise ValueError(f"{f.name} must be a non-empty string, got {v!r}")
            elif v is not None and not isinstance(v, str):
                raise ValueError(f"{f.name} must be a string or null, got {v!r}")
        for name, value, allowed in (("split", self.split, SPLITS), ("kind", self.kind, KINDS),
                                     ("task", self.task, world.TASK_NAMES + (CUSTOM, REALISTIC)),
                                     ("goal", self.goal, injections.GOALS + (CUSTOM, None)),
                                     ("judge", self.judge, JUDGES + (None,)),
                                     ("answer_match", self.answer_match, ANSWER_MATCHES + (None,)),
                                     ("position", self.position, injections.POSITIONS + (None,))):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {[a for a in allowed if a]}")
        need = {"injected": ("family", "goal", "position", "injection", "injected_target"),
                "probe_system": ("injection", "injected_target"),
                "probe_data": ("injection", "injected_target", "position")}.get(self.kind, ())
        for name in need:
            if not getattr(self, name):
                raise ValueError(f"kind={self.kind} needs {name}")
        if self.novel is not None and (not self.novel or set(self.novel.split(",")) - set(world.CONTENT_AXES)):
            raise ValueError(f"novel {self.novel!r} must name held-out axes from {world.CONTENT_AXES}, comma-joined")
        if (self.goal == CUSTOM) != (self.judge is not None):
            raise ValueError("goal 'custom' and a judge go together (a custom attack names its judge)")
        if self.task == CUSTOM and self.answer_match is not None and not self.target.strip():
            raise ValueError("answer_match needs an ideal answer (target)")
        for name in ("system", "data", "target", "injection"):
            v = getattr(self, name) or ""
            tok = next((t for t in SPECIAL_TOKENS if t in v), None)
            if tok:
                raise ValueError(f"{name} contains the chat control token {tok!r}")
        for name in _LABELS:  # printed on terminals and written into reports as they are
            c = unprintable(getattr(self, name) or "")
            if c is not None:
                raise ValueError(f"{name} contains the control or bidi character {char_name(c)} ({printable(c)}); "
                                 f"labels must be plain printable text")


def _dumps(r: Record) -> str:
    return json.dumps(r.to_dict(), ensure_ascii=False)


def write_split(path: Path, records: list[Record]) -> str:
    """Write atomically; returns the file's sha256."""
    text = "".join(_dumps(r) + "\n" for r in records).encode("utf-8")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)
    return hashlib.sha256(text).hexdigest()


def data_folder(data_dir) -> Path:
    return Path(getattr(data_dir, "data", data_dir))  # a RunPaths or a folder


def load_split(data_dir, name: str) -> list[Record]:
    """The records of one file (base_corpus, train, val, test), validated; DataError names file and line."""
    if name not in FILES:
        raise ValueError(f"unknown split {name!r}; choose from {FILES}")
    path = data_folder(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise DatasetMissingError(f"{path} is missing: it is built by {BUILT_BY}")
    want_split = "train" if name == "base_corpus" else name
    out, ids = [], set()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = Record.from_dict(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); rebuild with {BUILT_BY}") from None
            except RecursionError:  # [[[[... thousands deep
                raise DataError(f"{path}:{n}: the JSON is nested too deeply to be a record; rebuild with {BUILT_BY}") from None
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}:{n}: {e}") from None
            if r.split != want_split:
                raise DataError(f"{path}:{n}: record {r.id} has split {r.split!r}, expected {want_split!r}")
            if r.id in ids:
                raise DataError(f"{path}:{n}: duplicate id {r.id!r}")
            ids.add(r.id)
            out.append(r)
    return out


def load_dataset(data_dir) -> dict[str, list[Record]]:
    return {name: load_split(data_dir, name) for name in FILES}
