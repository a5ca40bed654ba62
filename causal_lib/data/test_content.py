"""Frozen test content (DESIGN.md s.11, issue 30): a sha256 of every held-out test-content set of the world,
kept in the committed manifest `causal_lib/data/test_content_manifest.json`.

The sets are what the test split holds and no training text may: the held-out request phrasings, the test
payload strings (their class and a fixed sample of the generator's output), the held-out injected task types,
the wrappers of the held-out families and the test-only templates, the test look-alike notes, and the SEP
probes with their witness words. tests/test_frozen_test_content.py fails when any of them changes without the
manifest being updated, so the test content cannot drift with the test results. Updating it is one command,
which asks for the reason (it goes into the manifest's history and belongs in the commit message too):

    python -m causal_lib.data.test_content                              # check: exit 1 and name the changed sets
    python -m causal_lib.data.test_content --update --reason "why"      # rewrite the manifest

The reason must not come from test numbers (an ASR, a rate, a test-set result): content chosen because it moved
a test metric is tuned on the test set. A reason citing such numbers is refused.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from causal_lib.core.hashing import json_hash
from causal_lib.data import attacks, injections, world

MANIFEST = Path(__file__).with_name("test_content_manifest.json")
UPDATE_COMMAND = 'python -m causal_lib.data.test_content --update --reason "<why the test content changed>"'
SAMPLE = 32  # generated strings per class hashed with their definition (the generator's output, not only its code)


# the fields that make a template's or a task's test content (a new bookkeeping field changes no hash)
_TEMPLATE_FIELDS = ("id", "family", "template", "goal", "transform", "copies", "splits")
_TASK_FIELDS = ("name", "doc_kind", "instructions", "requests", "test_requests")


def _templates(keep) -> list[dict]:
    return [{f: getattr(t, f) for f in _TEMPLATE_FIELDS} for t in attacks.BUILTIN_TEMPLATES if keep(t)]


def content_sets() -> dict[str, object]:
    """Every held-out test-content set of the world, as plain JSON-able values (name -> content)."""
    held = set(attacks.DEFAULT_HELD_OUT)
    return {
        "request_phrasings": {
            "output_hijack": injections.OUTPUT_REQUESTS["test"], "prompt_leak": injections.LEAK_REQUESTS["test"],
            "refusal": injections.REFUSAL_REQUESTS["test"],
            "tasks": {n: s.test_requests for n, s in world.TASKS.items() if n not in injections.HELD_OUT_TASKS}},
        "payloads": {"classes": world.STRING_CLASSES, "max_chars": world.MAX_STRING_CHARS,
                     "sample": world.payload_pool(SAMPLE, "test")},
        "held_out_task_types": {n: {f: getattr(world.TASKS[n], f) for f in _TASK_FIELDS}
                                for n in injections.HELD_OUT_TASKS},
        "wrappers": {"held_out_families": sorted(held),
                     "held_out_family_templates": _templates(lambda t: t.family in held),
                     "test_only_templates": _templates(lambda t: t.family not in held and "train" not in t.splits),
                     "ignore_sentences": attacks.IGNORE_EVAL},
        "lookalike_notes": injections.NOTES_TEST,
        "sep_probes": {"phrasings": injections.PROBES_TEST, "wrappers": injections.PROBE_WRAPPERS_TEST,
                       "witness_class": world.STRING_CLASSES["witness"],
                       "witness_sample": world.payload_pool(SAMPLE, "witness")},
    }


def _count(v) -> int:
    """Entries of a set: strings, templates (one per dict in a list), class numbers."""
    if isinstance(v, dict):
        return sum(_count(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_count(x) for x in v) if v and isinstance(v[0], (list, tuple)) else len(v)
    return 1


def digest(value) -> str:
    return json_hash(value, length=None, default=str, ensure_ascii=False)


def current() -> dict[str, dict]:
    """name -> {"sha256", "items"} of the world as it is now."""
    return {k: {"sha256": digest(v), "items": _count(v)} for k, v in content_sets().items()}


def read_manifest(path: Path | None = None) -> dict:
    path = Path(path or MANIFEST)
    return json.loads(path.read_text()) if path.exists() else {"sets": {}, "history": []}


def changed_sets(path: Path | None = None) -> list[str]:
    """The sets whose hash differs from the manifest's (added or removed sets included), sorted."""
    now, frozen = current(), read_manifest(path).get("sets", {})
    return sorted(k for k in set(now) | set(frozen)
                  if now.get(k, {}).get("sha256") != frozen.get(k, {}).get("sha256"))


def mismatch_message(changed: list[str]) -> str:
    return (f"the held-out test content changed without the manifest ({MANIFEST.name}) being updated: "
            f"{', '.join(changed)}. If the change is intended, update the manifest with `{UPDATE_COMMAND}` and give "
            "the same reason in the commit message: a reason that does not come from test numbers (never an ASR, a "
            "rate or any other result on the test set). Otherwise undo the change to the test content.")


# a reason drawn from test numbers: a percentage, a rate or an ASR, "p = ...", a test-set result
_TEST_NUMBER = re.compile(r"\d\s*%|\bASR\b|\bp\s*[=<]|\b(?:accuracy|success rate|rate|score)\b.*\d|\btest[- ]set\b.*\d",
                          re.IGNORECASE)


def check_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if len(reason) < 15:
        raise ValueError("give a reason of at least a short sentence (--reason): why the test content changed")
    if _TEST_NUMBER.search(reason):
        raise ValueError(f"the reason cites test numbers ({reason!r}); test content must not be chosen for its "
                         "results on the test set: give a reason that does not come from test numbers")
    return reason


def update(reason: str, path: Path | None = None) -> dict:
    """Rewrite the manifest with the current hashes; the reason and the changed sets go into its history."""
    reason = check_reason(reason)
    old = read_manifest(path)
    changed = changed_sets(path)
    manifest = {
        "about": ("sha256 of each held-out test-content set of the world (causal_lib/data/test_content.py); "
                  f"tests/test_frozen_test_content.py fails when one changes. Update: {UPDATE_COMMAND}"),
        "sets": current(),
        "history": old.get("history", []) + [{"date": time.strftime("%Y-%m-%d"), "changed": changed, "reason": reason}],
    }
    Path(path or MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.data.test_content", description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="rewrite the manifest with the current hashes")
    ap.add_argument("--reason", help="why the test content changed (not drawn from test numbers); required with --update")
    args = ap.parse_args(argv)
    if args.update:
        try:
            m = update(args.reason)
        except ValueError as e:
            print(f"refused: {e}", file=sys.stderr)
            return 2
        print(f"{MANIFEST.name} updated ({', '.join(m['history'][-1]['changed']) or 'no set changed'})")
        return 0
    changed = changed_sets()
    if changed:
        print(mismatch_message(changed), file=sys.stderr)
        return 1
    sets = ", ".join(f"{k} ({v['items']})" for k, v in current().items())
    print(f"test content unchanged: {sets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
