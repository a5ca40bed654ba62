"""The dataset of a run: the record schema, the splits, counterfactual pairs, saving and loading with
validation, the contamination check and `ensure_dataset`.

Files under outputs/<run>/data/ (JSONL, one Record per line, UTF-8, keys in schema order):
    base_corpus.jsonl  kind=base: instruction following for pre-training the undefended base (world.py)
    train.jsonl        clean + injected pairs, training families only (defense training)
    val.jsonl          clean + injected pairs over all families (model selection per epoch)
    test.jsonl         clean + injected pairs over all families, benign look-alikes, SEP probe pairs, and the
                       items of the external attack files of data.attack_files (source = the file's name)
    manifest.json      schema_version, seed, data_hash, counts, sha256 of every file, held-out families
Same seed and data params => byte-identical files; documents (clean_data) never repeat across files.

Record fields (SCHEMA_VERSION 1); optional ones are null when they do not apply:
    id, pair_id     unique id; a clean item and its injected twin (or the two sides of a probe) share pair_id
    split           train | val | test (the base corpus is training data: train)
    kind            base | clean | injected | lookalike | probe_system | probe_data
    task            world task name; system = S (trusted); data = U as the model sees it; clean_data = D
    target          O*: what the model should answer (for kind=base and probe_system: the followed request)
    family, goal, position, injection (Z incl. its wrapper), injected_target (O_inj; a probe's witness word)
    held_out        the attack family was held out of training
    template_id     the attack template ("naive/0", "<file>:<id>"), or the base/look-alike sub-kind
    source          "builtin" or the attack file's name
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from . import attacks, world

SCHEMA_VERSION = 1
GENERATOR_VERSION = 1  # bump when the generator's output changes for the same params (forces a rebuild)
SPLITS = ("train", "val", "test")
FILES = ("base_corpus", "train", "val", "test")  # file stems under the data folder
KINDS = ("base", "clean", "injected", "lookalike", "probe_system", "probe_data")
BUILT_BY = "chapter 02_dataset_validation (python -m causal_lib.book run --params <params> --from 02) or causal_lib.data.ensure_dataset(cfg, paths)"


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
            elif f.default is dataclasses.MISSING or f.name == "source":
                if not isinstance(v, str) or not v.strip():
                    raise ValueError(f"{f.name} must be a non-empty string, got {v!r}")
            elif v is not None and not isinstance(v, str):
                raise ValueError(f"{f.name} must be a string or null, got {v!r}")
        for name, value, allowed in (("split", self.split, SPLITS), ("kind", self.kind, KINDS),
                                     ("task", self.task, world.TASK_NAMES), ("goal", self.goal, world.GOALS + (None,)),
                                     ("position", self.position, world.POSITIONS + (None,))):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {[a for a in allowed if a]}")
        need = {"injected": ("family", "goal", "position", "injection", "injected_target"),
                "probe_system": ("injection", "injected_target"),
                "probe_data": ("injection", "injected_target", "position")}.get(self.kind, ())
        for name in need:
            if not getattr(self, name):
                raise ValueError(f"kind={self.kind} needs {name}")
        for name in ("system", "data", "target", "injection"):
            v = getattr(self, name) or ""
            tok = next((t for t in world.SPECIAL_TOKENS if t in v), None)
            if tok:
                raise ValueError(f"{name} contains the chat control token {tok!r}")


# ---------------------------------------------------------------------------------------------
# building the splits

def _rng(seed: int, name: str) -> random.Random:
    # str seeds are hashed with sha512 by random: stable across processes (unlike hash())
    return random.Random(f"causal-pi:{seed}:{name}")


def build_clean(n: int, rng: random.Random, seen_docs: set[str], split: str) -> list[Record]:
    """n clean items (S, D, O*) with documents not in seen_docs; tasks in turn so that every task is present."""
    out: list[Record] = []
    while len(out) < n:
        ex = world.sample_example(rng, task=world.TASK_NAMES[len(out) % len(world.TASK_NAMES)])
        d = ex.doc.text
        if d in seen_docs:
            continue
        seen_docs.add(d)
        pid = f"{split}-{len(out):05d}"
        out.append(Record(id=f"{pid}-clean", pair_id=pid, split=split, kind="clean", task=ex.inst.task,
                          system=ex.system, data=d, clean_data=d, target=ex.target))
    rng.shuffle(out)
    return out


def attack_plan(n: int, families, rng: random.Random) -> list[tuple[str, str, str]]:
    """(family, goal, position) for n items, balanced: every combination once per round of
    families x goals x positions; within a round the families take turns, so any n >= #families covers
    every family (a small validation split too)."""
    plan: list = []
    while len(plan) < n:
        per_family = {}
        for f in families:
            cells = list(itertools.product(world.GOALS, world.POSITIONS))
            rng.shuffle(cells)
            per_family[f] = cells
        for k in range(len(world.GOALS) * len(world.POSITIONS)):
            order = list(families)
            rng.shuffle(order)
            plan += [(f, *per_family[f][k]) for f in order]
    return plan[:n]


def build_pairs(clean: list[Record], families, held_out: set[str], rng: random.Random) -> list[Record]:
    """Each clean item followed by its injected twin."""
    out = []
    for rec, (fam, goal, pos) in zip(clean, attack_plan(len(clean), families, rng)):
        tpl = rng.choice(attacks.templates_for(fam, rec.split))
        inj = attacks.inject(rec, tpl, goal, pos, rng, id=f"{rec.pair_id}-inj", held_out=fam in held_out)
        out += [rec, inj]
    return out


def build_lookalikes(n: int, rng: random.Random, seen_docs: set[str], split: str = "test") -> list[Record]:
    """Benign data that merely mentions instructions (unseen note sentences); the answer is unchanged."""
    out = []
    for i, rec in enumerate(build_clean(n, rng, seen_docs, split)):
        k, pos = rng.randrange(len(world.NOTES_TEST)), rng.choice(world.POSITIONS)
        note, pid = world.NOTES_TEST[k], f"{split}-look-{i:04d}"
        out.append(dataclasses.replace(rec, id=pid, pair_id=pid, kind="lookalike", position=pos, injection=note,
                                       data=world.insert(rec.clean_data, note, pos, rng), template_id=f"note/{k}"))
    return out


def build_probes(n: int, rng: random.Random, seen_docs: set[str], split: str = "test") -> list[Record]:
    """SEP probe pairs: the same instruction in S (probe_system, target = its witness word) and in U
    (probe_data, target = O*)."""
    out = []
    for i, rec in enumerate(build_clean(n, rng, seen_docs, split)):
        payload = rng.choice(world.PAYLOADS)
        k = rng.randrange(len(world.SYSTEM_EXTRAS))
        probe = world.SYSTEM_EXTRAS[k].format(payload=payload)
        pid, pos = f"{split}-probe-{i:04d}", rng.choice(world.POSITIONS)
        common = dict(pair_id=pid, injection=probe, injected_target=payload, template_id=f"system_extra/{k}")
        out.append(dataclasses.replace(rec, id=f"{pid}-system", kind="probe_system", system=f"{rec.system} {probe}",
                                       target=payload, **common))
        out.append(dataclasses.replace(rec, id=f"{pid}-data", kind="probe_data", position=pos,
                                       data=world.insert(rec.clean_data, probe, pos, rng), **common))
    return out


def resolve_attack_file(path: str) -> Path:
    from .config import PROJECT_ROOT

    p = Path(path)
    if p.is_file():
        return p.resolve()
    if not p.is_absolute() and (PROJECT_ROOT / p).is_file():
        return PROJECT_ROOT / p
    raise DataError(f"data.attack_files: {path} not found (looked in {Path.cwd()} and {PROJECT_ROOT})")


def data_seed(cfg) -> int:
    """The world's seed: data.seed when set (seed replicas keep the main run's data), else run.seed."""
    return cfg.data.seed if cfg.data.seed is not None else cfg.run.seed


def build_dataset(cfg) -> dict[str, list[Record]]:
    """All files' records from the config (seeded). Eval splits are drawn first, so that the test set does
    not change with the size of the training corpus."""
    dc, seed = cfg.data, data_seed(cfg)
    held = set(dc.held_out_families)
    unknown = held - set(attacks.FAMILIES)
    if unknown:
        raise DataError(f"data.held_out_families: unknown family {sorted(unknown)}; built-in families: {list(attacks.FAMILIES)}")
    seen: set[str] = set()
    out: dict[str, list[Record]] = {}
    for split, n in (("test", dc.n_test), ("val", dc.n_val)):
        rng = _rng(seed, split)
        out[split] = build_pairs(build_clean(n, rng, seen, split), attacks.FAMILIES, held, rng)
    rng = _rng(seed, "test-extra")
    out["test"] += build_lookalikes(dc.n_benign_lookalikes, rng, seen) + build_probes(dc.n_sep_probes, rng, seen)
    test_clean = [r for r in out["test"] if r.kind == "clean"]
    for f in dc.attack_files:
        p = resolve_attack_file(f)
        out["test"] += attacks.expand_attack_file(attacks.load_attack_file(p), test_clean, seed=seed, source=p.name,
                                                  held_out_families=dc.held_out_families)
    rng = _rng(seed, "train")
    out["train"] = build_pairs(build_clean(dc.n_train, rng, seen, "train"), attacks.training_families(held), held, rng)
    out["base_corpus"] = world.build_base_corpus(dc.n_base_corpus, _rng(seed, "base"), seen)
    return {k: out[k] for k in FILES}


# ---------------------------------------------------------------------------------------------
# saving and loading

def _dumps(r: Record) -> str:
    return json.dumps(r.to_dict(), ensure_ascii=False)


def write_split(path: Path, records: list[Record]) -> str:
    """Write atomically; returns the file's sha256."""
    text = "".join(_dumps(r) + "\n" for r in records).encode("utf-8")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)
    return hashlib.sha256(text).hexdigest()


def _data_dir(data_dir) -> Path:
    return Path(getattr(data_dir, "data", data_dir))  # a RunPaths or a folder


def load_split(data_dir, name: str) -> list[Record]:
    """The records of one file (base_corpus, train, val, test), validated; DataError names file and line."""
    if name not in FILES:
        raise ValueError(f"unknown split {name!r}; choose from {FILES}")
    path = _data_dir(data_dir) / f"{name}.jsonl"
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


def data_hash(cfg) -> str:
    """What the files depend on: schema and generator versions, seed, data params, attack files' content."""
    files = []
    for f in cfg.data.attack_files:
        p = resolve_attack_file(f)
        files.append([p.name, hashlib.sha256(p.read_bytes()).hexdigest()])
    key = {"schema": SCHEMA_VERSION, "generator": GENERATOR_VERSION, "seed": data_seed(cfg),
           "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "seed"},  # resolved above
           "attack_files": files}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_ok(d: Path, h: str) -> str | None:
    """None when the folder holds the data of hash h intact; otherwise why not."""
    mp = d / "manifest.json"
    if not mp.is_file():
        return "no manifest"
    try:
        m = json.loads(mp.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    if m.get("schema_version") != SCHEMA_VERSION or m.get("data_hash") != h:
        return "data params, seed or schema changed"
    for name in FILES:
        p = d / f"{name}.jsonl"
        if not p.is_file() or _sha256(p) != m.get("files", {}).get(name, {}).get("sha256"):
            return f"{p.name} missing or changed"
    return None


def ensure_dataset(cfg, paths, force: bool = False) -> dict:
    """Build the data into paths.data unless it is there for these params (same data hash and files intact).
    Returns the manifest plus `built` (bool), `reason` and `seconds`."""
    d = _data_dir(paths)
    d.mkdir(parents=True, exist_ok=True)
    h = data_hash(cfg)
    reason = "forced" if force else _manifest_ok(d, h)
    if reason is None:
        m = json.loads((d / "manifest.json").read_text())
        return {**m, "built": False, "reason": "up to date", "seconds": 0.0}
    t0 = time.perf_counter()
    splits = build_dataset(cfg)
    files = {}
    for name, recs in splits.items():
        files[name] = {"sha256": write_split(d / f"{name}.jsonl", recs), "records": len(recs),
                       "kinds": dict(sorted(Counter(r.kind for r in recs).items()))}
    manifest = {
        "schema_version": SCHEMA_VERSION, "generator_version": GENERATOR_VERSION, "seed": data_seed(cfg),
        "data_hash": h, "data_params": dataclasses.asdict(cfg.data), "files": files,
        "families": list(attacks.FAMILIES), "held_out_families": list(cfg.data.held_out_families),
        "training_families": attacks.training_families(cfg.data.held_out_families),
        "attack_files": [{"path": f, "name": resolve_attack_file(f).name,
                          "sha256": _sha256(resolve_attack_file(f))} for f in cfg.data.attack_files],
    }
    from .chapter import write_json

    write_json(d / "manifest.json", manifest)
    return {**manifest, "built": True, "reason": reason, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# checks (chapter 02)

def _wordseq(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def _shingles(fragment: str, n: int) -> list[str]:
    w = re.findall(r"[a-z0-9]+", fragment.lower())
    if len(w) >= n:
        return [" " + " ".join(w[i:i + n]) + " " for i in range(len(w) - n + 1)]
    return [" " + " ".join(w) + " "] if len(w) >= 3 else []  # short fragments are matched whole


def contamination_check(splits: dict[str, list[Record]], held_out_families, n: int = 8) -> dict:
    """No held-out attack text in any training file (base_corpus, train).

    Held-out text = the literal wrapper text of every template of a held-out family and of every
    evaluation-only template (e.g. the held-out ignore sentences), and the test look-alike notes; matched as
    word n-grams (fragments shorter than n words, but >= 3, are matched whole). Also counts training records
    whose family is held out or whose template is evaluation-only.
    """
    held = set(held_out_families)
    texts = [(t.id, t.template) for t in attacks.BUILTIN_TEMPLATES if t.family in held or "train" not in t.splits]
    texts += [(f"note_test/{i}", s) for i, s in enumerate(world.NOTES_TEST)]
    training = {k: v for k, v in splits.items() if k in ("base_corpus", "train")}
    corpus = {k: "\n".join(_wordseq(r.data) for r in v) for k, v in training.items()}
    hits, n_sh = [], 0
    for tid, text in texts:
        for frag in re.split(r"\{\w+\}", text):
            for sh in _shingles(frag, n):
                n_sh += 1
                for k, c in corpus.items():
                    cnt = c.count(sh)
                    if cnt:
                        hits.append({"template_id": tid, "ngram": sh.strip(), "file": k, "count": cnt})
    eval_only = {t.id for t in attacks.BUILTIN_TEMPLATES if "train" not in t.splits}
    held_recs = sum(r.family in held for v in training.values() for r in v)
    eval_recs = sum(r.template_id in eval_only for v in training.values() for r in v)
    return {"ngram": n, "n_shingles": n_sh, "n_templates_checked": len(texts), "hits": hits[:20], "n_hits": len(hits),
            "held_out_family_records_in_training": held_recs, "eval_only_template_records_in_training": eval_recs,
            "clean": not hits and held_recs == 0 and eval_recs == 0}


def _norm_ws(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def pair_violations(records: list[Record]) -> list[str]:
    """Counterfactual-pair invariants: every injected item has a clean twin with the same S, D and O*, its U
    is D with Z inserted (removing Z gives D back), and O_inj differs from O*."""
    clean = {r.pair_id: r for r in records if r.kind == "clean"}
    bad = []
    for r in records:
        if r.kind == "clean" and r.data != r.clean_data:
            bad.append(f"{r.id}: clean item whose data differs from clean_data")
        if r.kind not in ("injected", "lookalike", "probe_data"):
            continue
        if r.injection not in r.data:
            bad.append(f"{r.id}: injection text not in the data")
        elif _norm_ws(r.data.replace(r.injection, " ")) != _norm_ws(r.clean_data):
            bad.append(f"{r.id}: data minus the injection is not the clean document")
        if r.kind != "injected":
            continue
        c = clean.get(r.pair_id)
        if c is None:
            bad.append(f"{r.id}: no clean twin with pair_id {r.pair_id}")
            continue
        for f in ("system", "clean_data", "target", "task"):
            if getattr(c, f) != getattr(r, f):
                bad.append(f"{r.id}: {f} differs from its clean twin")
        if attacks.normalize(r.injected_target) == attacks.normalize(r.target):
            bad.append(f"{r.id}: O_inj equals O*")
    probes = Counter(r.pair_id for r in records if r.kind in ("probe_system", "probe_data"))
    bad += [f"{p}: probe pair incomplete" for p, k in probes.items() if k != 2]
    return bad


def length_table(records: list[Record]) -> list[dict]:
    """One row per record: kind, family, goal, position and word counts of S, U, D, Z and the target."""
    wc = lambda s: len((s or "").split())  # noqa: E731
    return [{"id": r.id, "kind": r.kind, "family": r.family, "goal": r.goal, "position": r.position, "task": r.task,
             "held_out": r.held_out, "system_words": wc(r.system), "data_words": wc(r.data),
             "clean_words": wc(r.clean_data), "injection_words": wc(r.injection), "target_words": wc(r.target),
             "total_words": wc(r.system) + wc(r.data) + wc(r.target)} for r in records]


def _loader_rejects_corrupt(data_dir: Path) -> dict:
    """The loader's own test: a copy of test.jsonl with line 2 missing a field must fail naming line 2."""
    lines = (data_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    obj = json.loads(lines[1])
    obj.pop("target")
    lines[1] = json.dumps(obj)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test.jsonl").write_text("\n".join(lines) + "\n")
        try:
            load_split(tmp, "test")
        except DataError as e:
            return {"ok": "test.jsonl:2" in str(e) and "target" in str(e), "message": str(e).replace(tmp, "<tmp>")}
        return {"ok": False, "message": "a record without 'target' was accepted"}


def _count(recs, key) -> dict:
    return dict(sorted(Counter(key(r) for r in recs).items(), key=lambda kv: str(kv[0])))


def validate_dataset(data_dir, held_out_families=None) -> dict:
    """Chapter 02's three checks on a built data folder: loading, counterfactual pairs, attack diversity
    (with the contamination check); plus `checks` (hard ones decide NOT READY) and a verdict."""
    d = _data_dir(data_dir)
    manifest = json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").is_file() else {}
    held = set(held_out_families if held_out_families is not None else manifest.get("held_out_families", attacks.DEFAULT_HELD_OUT))
    rep: dict = {"data_dir": str(d), "files": {}}
    splits, t0 = {}, time.perf_counter()
    for name in FILES:
        try:
            splits[name] = load_split(d, name)
            sha_ok = manifest.get("files", {}).get(name, {}).get("sha256") == _sha256(d / f"{name}.jsonl")
            rep["files"][name] = {"ok": True, "records": len(splits[name]), "sha256_matches_manifest": sha_ok,
                                  "kinds": _count(splits[name], lambda r: r.kind)}
        except DataError as e:
            rep["files"][name] = {"ok": False, "error": str(e)}
    rep["load_seconds"] = time.perf_counter() - t0
    loaded = all(v["ok"] for v in rep["files"].values())
    rep["loader_rejects_corrupt"] = _loader_rejects_corrupt(d) if "test" in splits and splits["test"] else {"ok": False}
    allrec = [r for v in splits.values() for r in v]

    # counterfactual pairs
    viol = [v for name in SPLITS if name in splits for v in pair_violations(splits[name])]
    rep["pairs"] = {name: sum(r.kind == "injected" for r in splits.get(name, [])) for name in SPLITS}
    rep["pair_violations"] = {"count": len(viol), "examples": viol[:10]}
    inj = [r for r in allrec if r.kind == "injected"]
    rep["lengths"] = {k: _describe([len(getattr(r, a).split()) for r in v]) for k, v, a in
                      (("clean_words", [r for r in allrec if r.kind == "clean"], "data"), ("injected_words", inj, "data"),
                       ("injection_words", inj, "injection"), ("system_words", allrec, "system"),
                       ("target_words", [r for r in allrec if r.kind in ("clean", "lookalike", "probe_data")], "target"))}

    # split hygiene
    docs = {name: {r.clean_data for r in v} for name, v in splits.items()}
    rep["document_overlap"] = {f"{a}&{b}": len(docs[a] & docs[b]) for a, b in itertools.combinations(docs, 2)}
    train_like = [r for n_ in ("base_corpus", "train") for r in splits.get(n_, [])]
    rep["held_out_in_train"] = sum(r.family in held for r in train_like)
    rep["contamination"] = contamination_check(splits, held)

    # attack diversity (test split; train for comparison)
    test_inj = [r for r in splits.get("test", []) if r.kind == "injected"]
    train_inj = [r for r in splits.get("train", []) if r.kind == "injected"]
    builtin = [r for r in test_inj if r.source == "builtin"]
    rep["diversity"] = {
        "test": {"by_family": _count(test_inj, lambda r: r.family), "by_goal": _count(test_inj, lambda r: r.goal),
                 "by_position": _count(test_inj, lambda r: r.position), "by_source": _count(test_inj, lambda r: r.source),
                 "by_goal_position": _count(test_inj, lambda r: f"{r.goal}/{r.position}"),
                 "templates_per_family": {f: len({r.template_id for r in test_inj if r.family == f})
                                          for f in sorted({r.family for r in test_inj})},
                 # of the built-in attacks: an attack file's items are held out by construction
                 "held_out_share": sum(r.held_out for r in builtin) / max(len(builtin), 1),
                 "by_task": _count([r for r in splits.get("test", []) if r.kind == "clean"], lambda r: r.task)},
        "train": {"by_family": _count(train_inj, lambda r: r.family), "by_goal": _count(train_inj, lambda r: r.goal),
                  "by_position": _count(train_inj, lambda r: r.position)},
        "distinct_templates": len({r.template_id for r in inj}),
        "families": sorted({r.family for r in inj}),
    }
    clean_targets = Counter(r.target.lower() for r in allrec if r.kind == "clean")
    top_share = max(clean_targets.values()) / sum(clean_targets.values()) if clean_targets else 1.0
    rep["kinds_test"] = _count(splits.get("test", []), lambda r: r.kind)

    div = rep["diversity"]["test"]
    fam_min = min(div["by_family"].values()) if div["by_family"] else 0
    cells = len(world.GOALS) * len(world.POSITIONS)
    checks = [
        ("every file loads and validates", loaded, True, ", ".join(f"{k}: {v.get('records', 'ERROR')}" for k, v in rep["files"].items())),
        ("files match the manifest's sha256", loaded and all(v["sha256_matches_manifest"] for v in rep["files"].values()), True,
         "manifest present" if manifest else "no manifest"),
        ("loader names file and line of a corrupt record", rep["loader_rejects_corrupt"]["ok"], True,
         rep["loader_rejects_corrupt"].get("message", "")[:120]),
        ("counterfactual pairs differ only in Z (same S, D, O*)", loaded and not viol, True, f"{len(viol)} violations"),
        ("no document in two files", not any(rep["document_overlap"].values()), True,
         f"{sum(rep['document_overlap'].values())} shared documents"),
        ("no held-out family in training files", rep["held_out_in_train"] == 0, True, f"{rep['held_out_in_train']} records"),
        ("no held-out template text in training files", rep["contamination"]["clean"], True,
         f"{rep['contamination']['n_hits']} n-gram hits of {rep['contamination']['n_shingles']}"),
        (f">= 8 attack families in test", len(div["by_family"]) >= 8, False, f"{len(div['by_family'])} families"),
        ("every goal x position cell in test", len(div["by_goal_position"]) == cells, False,
         f"{len(div['by_goal_position'])}/{cells} cells"),
        (">= 10 test items per family", fam_min >= 10, False, f"min {fam_min}"),
        ("held-out share of test attacks 20-50%", 0.2 <= div["held_out_share"] <= 0.5, False, f"{div['held_out_share']:.0%}"),
        (">= 100 attacked test items", len(test_inj) >= 100, False, f"{len(test_inj)}"),
        (">= 30 look-alikes and >= 30 probe pairs", rep["kinds_test"].get("lookalike", 0) >= 30
         and rep["kinds_test"].get("probe_system", 0) >= 30, False,
         f"{rep['kinds_test'].get('lookalike', 0)} look-alikes, {rep['kinds_test'].get('probe_system', 0)} probe pairs"),
        ("no clean answer above 15% of items", top_share <= 0.15, False, f"top answer share {top_share:.1%}"),
    ]
    rep["checks"] = [{"check": c, "ok": bool(ok), "hard": hard, "value": v} for c, ok, hard, v in checks]
    rep["verdict"], rep["reasons"] = verdict(rep["checks"])
    return rep


def verdict(checks: list[dict]) -> tuple[str, list[str]]:
    """NOT READY if a hard check fails; EXCELLENT if every check passes; ACCEPTABLE otherwise."""
    hard = [c["check"] for c in checks if c["hard"] and not c["ok"]]
    soft = [c["check"] for c in checks if not c["hard"] and not c["ok"]]
    if hard:
        return "NOT READY", [f"failed: {c}" for c in hard] + [f"weak: {c}" for c in soft]
    if soft:
        return "ACCEPTABLE", [f"weak: {c}" for c in soft]
    return "EXCELLENT", ["every check passed"]


def _describe(xs: list[int]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"n": len(s), "mean": sum(s) / len(s), "min": s[0], "p50": q(0.5), "p99": q(0.99), "max": s[-1]}
