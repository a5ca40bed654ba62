"""The dataset of a run: the record schema, the splits, counterfactual pairs, saving and loading with
validation, the contamination check and `ensure_dataset`.

Files under outputs/<run>/data/ (JSONL, one Record per line, UTF-8, keys in schema order):
    base_corpus.jsonl  kind=base: instruction following for pre-training the undefended base (data/world.py)
    train.jsonl        clean + injected pairs, training families only (defense training)
    val.jsonl          clean + injected pairs, training families and content only (model selection per epoch)
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
    source          "builtin" or the attack file's name (a user document: the documents file's name)
    judge, instruction_type   (written only when set) an attack with its own instruction: goal="custom",
                    judge canary | starts_with | regex with injected_target = its argument
    answer_match    (written only when set) a user document (task="custom", data.documents_file): exact |
                    contains; absent = no ideal answer (benign accuracy not scored)
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
from collections import Counter
from pathlib import Path

from causal_lib.core import progress
from causal_lib.core.hashing import file_sha256, json_hash
from causal_lib.core.run_folder import write_json
from causal_lib.config import PROJECT_ROOT, portable_config, portable_path
from causal_lib.data import attacks, injections, realistic, world
from causal_lib.data.names import check_params as check_data_names
from causal_lib.data.records import FILES, SCHEMA_VERSION, DataError, Record, data_folder, write_split

REALISTIC_KEYS = ("realistic_train", "realistic_val", "realistic_base")
GENERATOR_VERSION = 3  # bump when the generator's output changes for the same params (forces a rebuild)


def _rng(seed: int, name: str) -> random.Random:
    # str seeds are hashed with sha512 by random: stable across processes (unlike hash())
    return random.Random(f"causal-pi:{seed}:{name}")


def content_of(split: str) -> str:
    """Test documents carry test-class strings (order codes); every other split only training content."""
    return "test" if split == "test" else "train"


NOVEL_SHARE = 0.5  # per test item and content axis: the chance that the axis draws held-out content


def draw_novel(rng: random.Random, split: str) -> tuple[str, ...]:
    """The content axes an injected item of this split draws from test-only content: none outside the test
    split; in it, each axis independently with probability NOVEL_SHARE (so every axis has seen and held-out
    items to compare)."""
    if split != "test":
        return ()
    return tuple(a for a in world.CONTENT_AXES if rng.random() < NOVEL_SHARE)


def build_clean(n: int, rng: random.Random, seen_docs: set[str], split: str) -> list[Record]:
    """n clean items (S, D, O*) with documents not in seen_docs; tasks in turn so that every task is present."""
    out: list[Record] = []
    while len(out) < n:
        ex = world.sample_example(rng, task=world.TASK_NAMES[len(out) % len(world.TASK_NAMES)],
                                  content=content_of(split))
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
            cells = list(itertools.product(injections.GOALS, injections.POSITIONS))
            rng.shuffle(cells)
            per_family[f] = cells
        for k in range(len(injections.GOALS) * len(injections.POSITIONS)):
            order = list(families)
            rng.shuffle(order)
            plan += [(f, *per_family[f][k]) for f in order]
    return plan[:n]


def build_pairs(clean: list[Record], families, held_out: set[str], rng: random.Random, k: int = 1) -> list[Record]:
    """Each clean item followed by its k injected twins (ids <pair>-inj, <pair>-inj2, ...), the (family, goal,
    position) of all n * k variants drawn from one balanced plan."""
    out = []
    plan = iter(attack_plan(len(clean) * k, families, rng))
    for rec in clean:
        out.append(rec)
        for j in range(k):
            fam, goal, pos = next(plan)
            tpl = rng.choice(attacks.templates_for(fam, rec.split))
            out.append(attacks.inject(rec, tpl, goal, pos, rng, id=f"{rec.pair_id}-inj{j + 1 if j else ''}",
                                      held_out=fam in held_out, novel=draw_novel(rng, rec.split)))
    return out


def build_lookalikes(n: int, rng: random.Random, seen_docs: set[str], split: str = "test") -> list[Record]:
    """Benign data that merely mentions instructions (unseen note sentences); the answer is unchanged."""
    out = []
    for i, rec in enumerate(build_clean(n, rng, seen_docs, split)):
        k, pos = rng.randrange(len(injections.NOTES_TEST)), rng.choice(injections.POSITIONS)
        note, pid = injections.NOTES_TEST[k], f"{split}-look-{i:04d}"
        out.append(dataclasses.replace(rec, id=pid, pair_id=pid, kind="lookalike", position=pos, injection=note,
                                       data=injections.insert(rec.clean_data, note, pos, rng), template_id=f"note/{k}"))
    return out


def build_probes(n: int, rng: random.Random, seen_docs: set[str], split: str = "test") -> list[Record]:
    """SEP probe pairs: the same instruction in S (probe_system, target = its witness word) and in U
    (probe_data, target = O*), a held-out phrasing (injections.PROBES_TEST); in U bare or inside a wrapper
    (PROBE_WRAPPERS_TEST; template_id "probe/<k>/wrapper/<w>", wrapper 0 = bare). Witness words come from their own
    class, disjoint from every payload."""
    out = []
    for i, rec in enumerate(build_clean(n, rng, seen_docs, split)):
        payload = injections.witness_word(rng)
        k = rng.randrange(len(injections.PROBES_TEST))
        probe = injections.PROBES_TEST[k].format(payload=payload)
        w = rng.randrange(len(injections.PROBE_WRAPPERS_TEST))
        in_data = injections.PROBE_WRAPPERS_TEST[w].format(probe=probe)
        pid, pos = f"{split}-probe-{i:04d}", rng.choice(injections.POSITIONS)
        common = dict(pair_id=pid, injected_target=payload, template_id=f"probe/{k}/wrapper/{w}")
        out.append(dataclasses.replace(rec, id=f"{pid}-system", kind="probe_system", system=f"{rec.system} {probe}",
                                       target=payload, injection=probe, **common))
        out.append(dataclasses.replace(rec, id=f"{pid}-data", kind="probe_data", position=pos, injection=in_data,
                                       data=injections.insert(rec.clean_data, in_data, pos, rng), **common))
    return out


def resolve_attack_file(path: str, key: str = "data.attack_files") -> Path:

    p = Path(path)
    if p.is_file():
        return p.resolve()
    if not p.is_absolute() and (PROJECT_ROOT / p).is_file():
        return PROJECT_ROOT / p
    raise DataError(f"{key}: {path} not found (looked in {Path.cwd()} and {PROJECT_ROOT})")


def check_data_files(cfg) -> None:
    """data.documents_file and data.attack_files exist and parse (attacks.load_*: format and size limits), checked
    before any work (`book check`, the start of a book run or a training command) rather than inside chapter 02.
    Raises DataError or attacks.AttackFileError naming the key, the file (and line) and the fix."""
    documents_file = getattr(cfg.data, "documents_file", None)
    if documents_file:
        attacks.load_documents_file(resolve_attack_file(documents_file, "data.documents_file"))
    for i, f in enumerate(cfg.data.attack_files):
        attacks.load_attack_file(resolve_attack_file(f, f"data.attack_files[{i}]"))


def data_seed(cfg) -> int:
    """The world's seed: data.seed when set (seed replicas keep the main run's data), else run.seed."""
    return cfg.data.seed if cfg.data.seed is not None else cfg.run.seed


def build_dataset(cfg) -> dict[str, list[Record]]:
    """All files' records from the config (seeded). Eval splits are drawn first, so that the test set does
    not change with the size of the training corpus."""
    check_data_names(cfg)  # also on a chapter run outside the book (run_folder.start, on the ground, cannot check)
    dc, seed = cfg.data, data_seed(cfg)
    held = set(dc.held_out_families)
    unknown = held - set(attacks.FAMILIES)
    if unknown:
        raise DataError(f"data.held_out_families: unknown family {sorted(unknown)}; built-in families: {list(attacks.FAMILIES)}")
    seen: set[str] = set()
    out: dict[str, list[Record]] = {}
    for split, n in (("test", dc.n_test), ("val", dc.n_val)):
        rng = _rng(seed, split)
        # validation: training families and content only, so recipe and epoch choices never see test content
        families = attacks.FAMILIES if split == "test" else attacks.training_families(held)
        out[split] = build_pairs(build_clean(n, rng, seen, split), families, held, rng,
                                 k=dc.attacks_per_clean if split == "test" else 1)
    rng = _rng(seed, "test-extra")
    out["test"] += build_lookalikes(dc.n_benign_lookalikes, rng, seen) + build_probes(dc.n_sep_probes, rng, seen)
    test_clean = [r for r in out["test"] if r.kind == "clean"]
    documents_file = getattr(dc, "documents_file", None)
    if documents_file:  # one's own documents: clean test items of their own; the attack files run on them instead
        test_clean = attacks.load_documents_file(resolve_attack_file(documents_file, "data.documents_file"))
        out["test"] += test_clean
    for f in dc.attack_files:
        p = resolve_attack_file(f)
        out["test"] += attacks.expand_attack_file(attacks.load_attack_file(p), test_clean, seed=seed, source=p.name,
                                                  held_out_families=dc.held_out_families)
    rng = _rng(seed, "train")
    out["train"] = build_pairs(build_clean(dc.n_train, rng, seen, "train"), attacks.training_families(held), held, rng)
    out["base_corpus"] = build_base_corpus(dc.n_base_corpus, _rng(seed, "base"), seen)
    add_realistic(out, dc, seed)
    return {k: out[k] for k in FILES}


def add_realistic(out: dict[str, list[Record]], dc, seed: int) -> None:
    """The realistic items of data.realistic_* (data/realistic.py) appended to train, val and the base corpus, in a
    seeded order of their own (so the world's records are the same with or without them): the train split's first
    realistic_train SEP train items with their injected twins, the base corpus the next realistic_base of them
    (clean, kind base), validation realistic_val SEP val items with twins. The test split is never touched (the
    realistic benchmarks are built at evaluation time, evaluation/literature.py)."""
    if dc.realistic_train:
        out["train"] += realistic.realistic_records("train", dc.realistic_train, seed)
    if dc.realistic_base:
        out["base_corpus"] += realistic.realistic_records("train", dc.realistic_base, seed, offset=dc.realistic_train,
                                                          injected=False, kind="base")
    if dc.realistic_val:
        out["val"] += realistic.realistic_records("val", dc.realistic_val, seed)


def data_hash(cfg) -> str:
    """What the files depend on: schema and generator versions, seed, data params, attack files' content."""
    files = []
    for f in cfg.data.attack_files:
        p = resolve_attack_file(f)
        files.append([p.name, file_sha256(p)])
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "seed"}  # seed resolved above
    if data.get("attacks_per_clean") == 1:
        data.pop("attacks_per_clean")  # the default: the same hash as before the option existed
    if data.get("documents_file") is None:
        data.pop("documents_file", None)  # unset: likewise
    else:
        p = resolve_attack_file(data["documents_file"], "data.documents_file")
        files.append(["documents", p.name, file_sha256(p)])
    if not any(data.get(k) for k in REALISTIC_KEYS):
        for k in REALISTIC_KEYS:  # world only: likewise
            data.pop(k, None)
    else:
        files.append(["realistic", realistic.fingerprint()])
    key = {"schema": SCHEMA_VERSION, "generator": GENERATOR_VERSION, "seed": data_seed(cfg), "data": data,
           "attack_files": files}
    return json_hash(key)


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
        if not p.is_file() or file_sha256(p) != m.get("files", {}).get(name, {}).get("sha256"):
            return f"{p.name} missing or changed"
    return None


def ensure_dataset(cfg, paths, force: bool = False) -> dict:
    """Build the data into paths.data unless it is there for these params (same data hash and files intact).
    Returns the manifest plus `built` (bool), `reason` and `seconds`."""
    d = data_folder(paths)
    d.mkdir(parents=True, exist_ok=True)
    h = data_hash(cfg)
    reason = "forced" if force else _manifest_ok(d, h)
    if reason is None:
        m = json.loads((d / "manifest.json").read_text())
        return {**m, "built": False, "reason": "up to date", "seconds": 0.0}
    t0 = time.perf_counter()
    progress.report(f"data: building the dataset ({reason})", force=True)
    splits = build_dataset(cfg)
    progress.report(f"data: built in {time.perf_counter() - t0:.1f} s, writing {d.name}/", force=True)
    files = {}
    for name, recs in splits.items():
        files[name] = {"sha256": write_split(d / f"{name}.jsonl", recs), "records": len(recs),
                       "kinds": dict(sorted(Counter(r.kind for r in recs).items()))}
    manifest = {
        "schema_version": SCHEMA_VERSION, "generator_version": GENERATOR_VERSION, "seed": data_seed(cfg),
        "data_hash": h, "data_params": portable_config(cfg)["data"], "files": files,
        "families": list(attacks.FAMILIES), "held_out_families": list(cfg.data.held_out_families),
        "training_families": attacks.training_families(cfg.data.held_out_families),
        "attack_files": [{"path": portable_path(f), "name": resolve_attack_file(f).name,
                          "sha256": file_sha256(resolve_attack_file(f))} for f in cfg.data.attack_files],
    }
    if getattr(cfg.data, "documents_file", None):
        p = resolve_attack_file(cfg.data.documents_file, "data.documents_file")
        manifest["documents_file"] = {"path": portable_path(cfg.data.documents_file), "name": p.name,
                                      "sha256": file_sha256(p)}
    write_json(d / "manifest.json", manifest)
    return {**manifest, "built": True, "reason": reason, "seconds": time.perf_counter() - t0}


REVISION_SHARE = 0.40  # a plain revision request inside the data, followed


SYSTEM_EXTRA_SHARE = 0.15  # S itself carries an extra instruction, followed


def build_base_corpus(n: int, rng: random.Random, seen_docs: set[str], split: str = "train") -> list:
    """Instruction following wherever the instruction is (kind="base").

    ~45% plain tasks (a third with a benign note that merely mentions instructions, answer unchanged),
    ~40% a plain revision request in the user turn at the start, middle or end of the data, covering the
    four goals' behaviours (print a word, do another task, repeat the instructions, refuse) - the target
    follows it, as a chat model follows a user's later request; ~15% S carries an extra instruction
    ("Then reply only with the word X."), followed. No attack wrapper appears here. Documents are unique
    and added to `seen_docs`.
    """

    out = []
    i = 0
    while len(out) < n:
        ex = world.sample_example(rng)
        d = ex.doc.text
        if d in seen_docs:
            continue
        seen_docs.add(d)
        pid = f"base-{i:06d}"
        i += 1
        u = rng.random()
        common = dict(id=pid, pair_id=pid, split=split, kind="base", task=ex.inst.task, clean_data=d)
        if u < REVISION_SHARE:
            goal = injections.GOALS[len(out) % len(injections.GOALS)]  # balanced over the four behaviours
            position = rng.choice(injections.POSITIONS)
            z, o, _ = injections.goal_request(goal, ex.doc, ex.system, ex.target, rng)
            out.append(Record(**common, system=ex.system, data=injections.insert(d, z, position, rng), target=o,
                              goal=goal, position=position, injection=z, injected_target=o, template_id="revision"))
        elif u < REVISION_SHARE + SYSTEM_EXTRA_SHARE:
            payload = injections.payload(rng)
            extra = rng.choice(injections.SYSTEM_EXTRAS).format(payload=payload)
            out.append(Record(**common, system=f"{ex.system} {extra}", data=d, target=payload,
                              injection=extra, injected_target=payload, template_id="system_extra"))
        elif rng.random() < 1 / 3:
            note = rng.choice(injections.NOTES_BASE)
            data = injections.insert(d, note, rng.choice(injections.POSITIONS), rng)
            out.append(Record(**common, system=ex.system, data=data,
                              target=ex.target, injection=note, template_id="note"))
        else:
            out.append(Record(**common, system=ex.system, data=d, target=ex.target, template_id="plain"))
    return out


def training_fingerprint() -> str:
    """A hash of the world's text a base model and its tokenizer learn from: the base corpus and the train split of
    a small seeded build (the base tunes on the base corpus and the train split's clean items, the embedded
    tokenizer reads the whole train split) and the pools they draw from (the tasks without their test-only
    phrasings, the training phrasings of each request, the system extras, the base corpus's notes, the refusal text,
    the training families' templates). The realistic items a recipe adds enter its recipe hash instead
    (shipped_base.base_recipe: realistic_fingerprint). The test split's content (held-out phrasings, payload class,
    look-alike notes, SEP probes, held-out wrappers) is not in it: changing what the test holds out does not change
    what a base learned (the frozen test-content manifest, data.test_content, guards it). The shipped bases are
    checked against this (training/shipped_base.py), so a fix to test content does not force a re-derivation."""
    from causal_lib.config import Config, DataConfig

    cfg = Config(data=DataConfig(seed=0, n_base_corpus=400, n_train=40, n_val=16, n_test=48,
                                 n_benign_lookalikes=8, n_sep_probes=8))
    sample = build_dataset(cfg)
    key = {
        "schema": SCHEMA_VERSION,
        "tasks": {k: {f: v for f, v in dataclasses.asdict(t).items() if f != "test_requests"}
                  for k, t in world.TASKS.items()},
        "requests": [pool["train"] for pool in (injections.OUTPUT_REQUESTS, injections.LEAK_REQUESTS,
                                                injections.REFUSAL_REQUESTS)],
        "extras": [injections.SYSTEM_EXTRAS, injections.NOTES_BASE, injections.REFUSAL],
        "templates": [dataclasses.asdict(t) for t in attacks.BUILTIN_TEMPLATES
                      if t.family not in attacks.DEFAULT_HELD_OUT and "train" in t.splits],
        "base_corpus": [r.to_dict() for r in sample["base_corpus"]],
        "train": [r.to_dict() for r in sample["train"]],
    }
    return json_hash(key, default=str)


def world_fingerprint() -> str:
    """A hash of what the world generates: every task, phrase pool, note and attack template, and a small
    seeded dataset built by this code. It changes whenever the generator's output changes (for any seed,
    as far as the sample shows), so a base trained on an older world is detected (training/shipped_base.py)."""
    from causal_lib.config import Config, DataConfig

    cfg = Config(data=DataConfig(seed=0, n_base_corpus=400, n_train=40, n_val=16, n_test=48,
                                 n_benign_lookalikes=8, n_sep_probes=8))
    sample = build_dataset(cfg)
    key = {
        "schema": SCHEMA_VERSION, "generator": GENERATOR_VERSION,
        "tasks": {k: dataclasses.asdict(v) for k, v in world.TASKS.items()},
        "requests": [injections.OUTPUT_REQUESTS, injections.LEAK_REQUESTS, injections.REFUSAL_REQUESTS],
        "extras": [injections.SYSTEM_EXTRAS, injections.NOTES_BASE, injections.NOTES_TEST, injections.REFUSAL,
                   injections.PROBES_TEST, injections.PROBE_WRAPPERS_TEST],
        "templates": [dataclasses.asdict(t) for t in attacks.BUILTIN_TEMPLATES],
        "default_held_out": list(attacks.DEFAULT_HELD_OUT),
        "sample": {k: [r.to_dict() for r in v] for k, v in sample.items()},
    }
    return json_hash(key, default=str)
