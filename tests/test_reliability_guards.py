"""Issue 34, reliability round 2: bad inputs to the params, the run folder and the training command each get one
clear line naming the thing and the fix, with nothing written (or followed) outside outputs/<run>/.

Items: 3 (training CLI: run lock and params hash), 4 (YAML alias bomb, recursive alias, deep nesting), 6 (held-out
family names, attack and documents files checked by `book check`), 7 (`run: {name: x}` alone passes `book check`),
9 (a 5001-digit integer), 11 (symbolic links in or as a run folder), 12 (no absolute attack-file path in run.json or
data/manifest.json), 13 (no kernel-ipc-* socket files left in the project after Ctrl-C), 15 (`1e-4` for a float key)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from causal_lib.book import chapters, kernel, runner
from causal_lib.book.chapters import Chapter
from causal_lib.book.lock import RunLock
from causal_lib.book.runner import main, run_book
from causal_lib.config import PROJECT_ROOT, Config, ConfigError, config_from_dict, load_config, parse_overrides

SMOKE = str(PROJECT_ROOT / "params" / "smoke.yaml")
EXAMPLE = PROJECT_ROOT / "params" / "attacks" / "example_attacks.jsonl"


def _check(argv, capsys) -> tuple[int, str]:
    """`python -m causal_lib.book check ARGV`: exit status and the one stderr line (asserted to be one line)."""
    rc = main(["check", *argv])
    out = capsys.readouterr()
    err = out.err.strip()
    if rc != 0:
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert "OK" not in out.out
    return rc, err


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---- item 4: YAML aliases and nesting; item 9: a 5001-digit integer ---------------------------------------

BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    """324 bytes that expand to 9**9 strings: refused at the first alias, in a process capped at 1 GiB."""
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    assert len(BOMB) < 400
    probe = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
             "from causal_lib.book import runner\nsys.exit(runner.main(['check', '--params', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", probe, str(p)], capture_output=True, text=True, cwd=PROJECT_ROOT,
                       timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"error: {p}: YAML aliases (*a) are not accepted in params at line 2, column 8; write the value out in full"]


@pytest.mark.parametrize("text,match", [
    ("run: &a [*a]\n", r"YAML aliases \(\*a\) are not accepted in params at line 1, column 10"),
    ("run: {name: x}\ntrain: &t {epochs: 1}\neval: *t\n", r"YAML aliases \(\*t\) are not accepted"),
    ("run: " + "[" * 100_000 + "]" * 100_000 + "\n", r"nested more than 32 levels deep at line 1"),
    ("run:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)), r"nested more than 32 levels deep"),
    ("run: {seed: " + "9" * 5001 + "}\n", r"an integer of 5001 digits at line 1, column 13 is too long"),
])
def test_aliases_deep_nesting_and_huge_integers_are_one_line(tmp_path, capsys, text, match):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    t0 = time.monotonic()
    rc, err = _check(["--params", str(p)], capsys)
    assert rc == 2 and f"error: {p}: " in err, err
    assert __import__("re").search(match, err), err
    assert time.monotonic() - t0 < 10


def test_a_5001_digit_integer_in_set_is_one_line(capsys):
    rc, err = _check(["--params", SMOKE, "--set", "run.seed=" + "9" * 5001], capsys)
    assert rc == 2 and "an integer of 5001 digits" in err and "--set 'run.seed=999" in err and len(err) < 400, err
    with pytest.raises(ConfigError, match=r"run.seed: an integer of about 50\d\d digits is out of range, must be <= "):
        config_from_dict({}, {"run.seed": 10 ** 5000})  # a Python caller's: no repr of it is attempted


# ---- item 15: 1e-4 for a float key ----------------------------------------------------------------------

def test_exponent_notation_without_a_dot_is_a_float(tmp_path):
    cfg = config_from_dict({}, parse_overrides(["train.learning_rate=1e-4", "train.dpo_learning_rate=5E-5",
                                                "train.base_curriculum_stage_epochs=[1e0]",
                                                "train.base_curriculum=[[first_item]]"]))
    assert cfg.train.learning_rate == 1e-4 and cfg.train.dpo_learning_rate == 5e-5
    assert cfg.train.base_curriculum_stage_epochs == [1.0]
    p = tmp_path / "lr.yaml"
    p.write_text("run: {name: x}\ntrain: {learning_rate: 1e-4, base_learning_rate: 2e-3}\n")
    cfg = load_config(p)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.base_learning_rate == 2e-3
    assert cfg.params_hash() == config_from_dict({"train": {"learning_rate": 0.0001, "base_learning_rate": 0.002}}).params_hash()
    with pytest.raises(ConfigError, match=r"train.learning_rate: 10.0 is out of range, must be <= 1.0"):
        config_from_dict({}, parse_overrides(["train.learning_rate=1e1"]))
    with pytest.raises(ConfigError, match=r"train.epochs: inf is not allowed"):
        config_from_dict({}, parse_overrides(["train.epochs=1e999"]))
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got str '1e3'"):
        config_from_dict({}, parse_overrides(["train.batch_size=1e3"]))


# ---- item 7: the README's minimal params file --------------------------------------------------------------

def test_a_minimal_params_file_passes_book_check(tmp_path, capsys):
    manifest = json.loads((PROJECT_ROOT / "causal_lib" / "base_model" / "manifest.json").read_text())
    tiny = Config().model.tiny
    assert {k: getattr(tiny, k) for k in manifest["model"]["tiny"]} == manifest["model"]["tiny"]
    p = tmp_path / "min.yaml"
    p.write_text("run: {name: x}\n")
    rc, err = _check(["--params", str(p)], capsys)
    assert rc == 0, err


# ---- item 6: held-out family names, attack and documents files at check time --------------------------------

def test_a_misspelt_held_out_family_is_refused_naming_the_closest(capsys):
    rc, err = _check(["--params", SMOKE, "--set", "data.held_out_families=[role_authorty, obfuscation]"], capsys)
    assert rc == 2 and "data.held_out_families[0]: unknown attack family 'role_authorty' (did you mean " \
                       "'role_authority'?)" in err, err
    from causal_lib.data.attacks import FAMILIES

    rc, err = _check(["--params", SMOKE, "--set", f"data.held_out_families=[{', '.join(FAMILIES)}]"], capsys)
    assert rc == 2 and "leave at least one for training" in err, err


def test_attack_and_documents_files_are_checked_by_book_check(tmp_path, capsys):
    rc, err = _check(["--params", SMOKE, "--set", f"data.attack_files=[{tmp_path / 'nope.jsonl'}]"], capsys)
    assert rc == 1 and "data.attack_files[0]" in err and "nope.jsonl not found" in err, err
    rc, err = _check(["--params", SMOKE, "--set", f"data.documents_file={tmp_path / 'docs.jsonl'}"], capsys)
    assert rc == 1 and "data.documents_file" in err and "docs.jsonl not found" in err, err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(EXAMPLE.read_text().splitlines()[0] + "\n" + '{"id": "x", "family": "f", "template": "no slot"}\n')
    rc, err = _check(["--params", SMOKE, "--set", f"data.attack_files=[{bad}]"], capsys)
    assert rc == 1 and f"{bad}:2" in err and "{instruction}" in err, err
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "d1"}\n')
    rc, err = _check(["--params", SMOKE, "--set", f"data.documents_file={docs}"], capsys)
    assert rc == 1 and f"{docs}:1" in err, err
    rc, err = _check(["--params", SMOKE, "--set", f"data.attack_files=[{EXAMPLE}]"], capsys)
    assert rc == 0, err


# ---- the fake book of tests/test_book.py: papermill replaced by a recorder -----------------------------------

@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "01_ok.py").write_text("# %%\nx = 1\n")
    monkeypatch.setattr(chapters, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(chapters, "CHAPTERS", [Chapter("01_ok")])
    ran = []

    def execute(run, cfg, pf, ov, paths, **kw):
        ran.append(run.label)
        return {"label": run.label, "status": "ok", "error": None, "wall_s": 0, "peak_rss_gb": 0}

    monkeypatch.setattr(runner, "execute_chapter", execute)
    return ran


# ---- item 3: the training command takes the run lock and checks the params hash -----------------------------

def test_the_training_cli_refuses_a_run_folder_of_other_params_and_a_locked_one(tmp_path, fake_runs, monkeypatch,
                                                                                  capsys):
    from causal_lib.training import cli as train_cli

    built = []
    monkeypatch.setattr(train_cli, "ensure_dataset", lambda cfg, paths: built.append(cfg.data.n_test))
    monkeypatch.setattr(train_cli.registry, "get", lambda name: type("D", (), {"train": staticmethod(
        lambda cfg, paths, resume=False: None)}))
    out_root = tmp_path / "outputs"
    run_book("params/smoke.yaml", overrides={"run.output_root": str(out_root)}, run_name="qa")
    run_json = out_root / "qa" / "run.json"
    before = run_json.read_bytes()
    args = ["--params", "params/smoke.yaml", "--run", "qa", "--defense", "causal", "--set", f"run.output_root={out_root}"]
    capsys.readouterr()
    assert train_cli.main(args + ["data.n_test=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a run made with other params" in err and "--run NAME" in err, err
    assert built == [] and run_json.read_bytes() == before  # the run's data was not rebuilt, run.json untouched

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out_root / "qa" / RunLock.NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                                "created": time.time(), "started": "now"}))
        assert train_cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by another book run (pid {holder.pid}" in err and len(err.splitlines()) == 1, err
        assert built == []
    finally:
        holder.kill()
        holder.wait()
    assert train_cli.main(args) == 0  # same params, lock gone: trains, and releases the lock
    assert built == [120] and not (out_root / "qa" / RunLock.NAME).exists()


def test_a_chapter_outside_the_runner_refuses_a_run_folder_of_other_params(tmp_path):
    from causal_lib.core import run_folder
    over = {"run.output_root": str(tmp_path / "outputs")}
    cfg, paths = run_folder.start(SMOKE, over)
    run_folder.write_json(paths.root / "run.json", {"params_hash": cfg.params_hash(), "chapters": {}})
    assert run_folder.start(SMOKE, over)[0] == cfg
    with pytest.raises(run_folder.RunFolderError, match="holds a run made with other params"):
        run_folder.start(SMOKE, {**over, "data.n_test": 8})


# ---- item 11: symbolic links in or as a run folder ---------------------------------------------------------

@pytest.mark.parametrize("where", ["html/index.html", "run.json", "metrics", "."])
def test_symbolic_links_in_or_as_a_run_folder_are_refused_and_not_followed(tmp_path, fake_runs, capsys, where):
    out_root = tmp_path / "outputs"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("precious")
    link = out_root / "R" / where if where != "." else out_root / "R"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / "x" if "." in where[1:] else outside)
    rc = main(["run", "--params", SMOKE, "--run", "R", "--set", f"run.output_root={out_root}"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "is a symbolic link" in err and "never writes through a link" in err and f"rm {link}" in err, err
    assert fake_runs == [] and link.is_symlink()  # refused before anything ran; the link itself is left alone
    assert _tree(outside) == ["x"] and (outside / "x").read_text() == "precious"


def test_atomic_writes_replace_a_link_instead_of_writing_through_it(tmp_path):
    from causal_lib.core.run_folder import write_text_atomic

    target = tmp_path / "x"
    target.write_text("precious")
    link = tmp_path / "index.html"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert target.read_text() == "precious" and not link.is_symlink() and link.read_text() == "new"
    (tmp_path / "a.json.tmp").symlink_to(target)  # a link planted at the temporary name: refused, not followed
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "a.json", "new")
    assert target.read_text() == "precious" and (tmp_path / "a.json.tmp").is_symlink()


# ---- item 12: no absolute attack-file path in run.json or data/manifest.json ---------------------------------

def test_absolute_attack_file_paths_are_not_recorded(tmp_path, fake_runs):
    from causal_lib.core.hashing import file_sha256
    from causal_lib.core.run_folder import RunPaths
    from causal_lib.data import build

    mine = tmp_path / "secret_place" / "mine.jsonl"
    mine.parent.mkdir()
    mine.write_bytes(EXAMPLE.read_bytes())
    out_root = tmp_path / "outputs"
    small = {"run.output_root": str(out_root), "data.attack_files": [str(mine), str(EXAMPLE)],
             "data.documents_file": None, "data.n_base_corpus": 10, "data.n_train": 10, "data.n_val": 4,
             "data.n_test": 4, "data.n_benign_lookalikes": 0, "data.n_sep_probes": 0}
    state = run_book("params/smoke.yaml", overrides=small)
    cfg = load_config(SMOKE, small)
    build.ensure_dataset(cfg, RunPaths(cfg.run_dir))
    for f in (cfg.run_dir / "run.json", cfg.run_dir / "data" / "manifest.json"):
        text = f.read_text()
        assert str(tmp_path) not in text and str(PROJECT_ROOT) not in text, f
    assert state["config"]["data"]["attack_files"] == ["mine.jsonl", "params/attacks/example_attacks.jsonl"]
    assert state["input_files"][0] == {"key": "data.attack_files[0]", "path": "mine.jsonl", "sha256": file_sha256(mine)}
    manifest = json.loads((cfg.run_dir / "data" / "manifest.json").read_text())
    assert [a["path"] for a in manifest["attack_files"]] == ["mine.jsonl", "params/attacks/example_attacks.jsonl"]
    assert manifest["attack_files"][0]["sha256"] == file_sha256(mine)
    assert cfg.data.attack_files[0] == str(mine)  # the run itself still reads the file where it is
    # the executed notebooks (archived too) name it the same way: their injected overrides hold the path as given
    nb = tmp_path / "01.ipynb"
    nb.write_text(json.dumps({"cells": [{"source": f"overrides = {json.dumps({'data.attack_files': [str(mine)]})}"}],
                              "metadata": {"papermill": {"cwd": str(PROJECT_ROOT)}}}))
    kernel.portable_notebook(nb, kernel.absolute_user_paths(cfg))
    text = nb.read_text()
    assert str(tmp_path) not in text and str(PROJECT_ROOT) not in text and "mine.jsonl" in text


# ---- item 13: Ctrl-C leaves no kernel-ipc-* socket files ----------------------------------------------------

@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_a_stopped_book_leaves_no_kernel_socket_files_in_the_project(tmp_path, how):
    """The kernel's IPC sockets live in a private temporary folder, removed when the chapter ends however it ends
    (Ctrl-C); not in the project root, where jupyter_client's default "kernel-ipc-<n>" put them and where a hard
    stop (kill -9, out of memory) left them behind."""
    driver = Path(__file__).with_name("book_driver.py")
    short_tmp = Path(tempfile.mkdtemp(prefix="cpi", dir="/tmp"))  # a socket path must stay short
    before = set(PROJECT_ROOT.glob("kernel-ipc*"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1",
           "TMPDIR": str(short_tmp)}
    proc = subprocess.Popen([sys.executable, str(driver), str(tmp_path), "--sleep", "120", "--", "run", "--params",
                             "params/smoke.yaml", "--set", f"run.output_root={tmp_path / 'outputs'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(PROJECT_ROOT))
    kernel = None
    try:
        pid_file = tmp_path / "kernel.pid"
        t0 = time.time()
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() - t0 < 120, "the chapter's kernel never started"
            time.sleep(0.2)
        kernel = int(pid_file.read_text())
        own_folder = list(short_tmp.glob("causal-pi-kernel-*/kernel-*"))  # the kernel's sockets, while it runs
        os.kill(proc.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if how == "kill -9" and kernel is not None:  # the orphaned kernel
            with __import__("contextlib").suppress(OSError):
                os.kill(kernel, signal.SIGKILL)
    assert set(PROJECT_ROOT.glob("kernel-ipc*")) <= before  # nothing new in the project root
    assert own_folder, "the kernel's sockets were not in their own folder"
    if how == "ctrl-c":
        assert proc.returncode == 130, out
        assert not list(short_tmp.iterdir())  # and the private socket folder is gone
    __import__("shutil").rmtree(short_tmp)
