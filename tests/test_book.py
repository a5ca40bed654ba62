"""The runner: order, variants, failure naming chapter and cell, resume (source and params hashes), params-hash guard."""
import hashlib
import json
from pathlib import Path

import pytest


from causal_lib.book import chapters, kernel, runner
from causal_lib.book.chapters import Chapter, chapter_runs
from causal_lib.book.common import BookError
from causal_lib.book.runner import run_book
from causal_lib.config import Config

OK_NB = '''# %% [markdown]
# # ok chapter
# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
defense = "none"
# %%
from causal_lib.book import reports
from causal_lib.core import run_folder
cfg, paths = run_folder.start(params_file, overrides)
run_folder.write_metrics(paths, f"ok_{defense}", {"defense": defense, "seed": cfg.run.seed})
reports.record_verdict(paths, "01_ok", "PASS", "fine")
print("value", 42)
'''
FAIL_NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
# %%
x = 1
# %%
raise ValueError("boom in the chapter")
'''


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "01_ok.py").write_text(OK_NB)
    (nbdir / "02_variants.py").write_text(OK_NB)
    (nbdir / "03_fail.py").write_text(FAIL_NB)
    (nbdir / "04_after.py").write_text(OK_NB)
    monkeypatch.setattr(chapters, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(chapters, "CHAPTERS", [
        Chapter("01_ok"),
        Chapter("02_variants", variants=lambda cfg: [("a", {"defense": "a"}), ("b", {"defense": "b"})]),
        Chapter("03_fail"),
        Chapter("04_after"),
    ])
    return {"run.output_root": str(tmp_path / "outputs")}


def test_chapter_list_is_complete_and_variants_follow_defenses():
    labels = [r.label for r in chapter_runs(Config())]
    assert labels[0] == "01_setup_check" and labels[-1] == "09_phase2_report"
    assert "05_train[causal]" in labels and "05_train[struq]" in labels and "05_train[secalign]" in labels
    assert [int(r.chapter.number) for r in chapter_runs(Config())] == sorted(int(r.chapter.number) for r in chapter_runs(Config()))


@pytest.mark.slow
def test_failure_names_chapter_and_cell_and_keeps_earlier_outputs(fake_book, tmp_path):
    with pytest.raises(BookError) as e:
        run_book("params/smoke.yaml", overrides=fake_book)
    msg = str(e.value)
    assert "03_fail" in msg and "raise ValueError" in msg and "ValueError: boom in the chapter" in msg and "--from 03" in msg
    run_dir = tmp_path / "outputs" / "smoke"
    state = json.loads((run_dir / "run.json").read_text())
    assert state["chapters"]["01_ok"]["status"] == "ok"
    assert state["chapters"]["02_variants[b]"]["status"] == "ok"
    assert state["chapters"]["03_fail"]["status"] == "failed"
    assert "04_after" not in state["chapters"]
    # variants ran with their own parameters, earlier outputs kept, partial notebook rendered too
    assert json.loads((run_dir / "metrics" / "ok_b.json").read_text())["defense"] == "b"
    for name in ("01_ok", "02_variants__a", "02_variants__b", "03_fail"):
        assert (run_dir / "notebooks" / f"{name}.ipynb").exists()
        assert (run_dir / "html" / f"{name}.html").exists()
    index = (run_dir / "html" / "index.html").read_text()
    assert "01_ok.html" in index and "PASS" in index and "FAILED" in index
    assert state["chapters"]["01_ok"]["peak_rss_gb"] > 0.01  # the kernel's memory was measured

    # --resume reruns only what did not finish ok; --from starts where asked
    (tmp_path / "notebooks" / "03_fail.py").write_text(OK_NB)
    mtime = (run_dir / "notebooks" / "01_ok.ipynb").stat().st_mtime
    state = run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert (run_dir / "notebooks" / "01_ok.ipynb").stat().st_mtime == mtime
    assert state["chapters"]["04_after"]["status"] == "ok"


def test_refuses_to_mix_params_in_one_run_folder(fake_book, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "execute_chapter", lambda run, cfg, pf, ov, paths, **kw: {"status": "ok", "wall_s": 0, "peak_rss_gb": 0})
    run_book("params/smoke.yaml", overrides=fake_book, only=["01"])
    with pytest.raises(BookError, match="other params"):
        run_book("params/smoke.yaml", overrides={**fake_book, "train.epochs": 3}, only=["01"])
    # a different run name is fine
    run_book("params/smoke.yaml", overrides={**fake_book, "train.epochs": 3}, only=["01"], run_name="other")


def test_from_unknown_chapter_is_an_error(fake_book):
    with pytest.raises(BookError, match="no such chapter"):
        run_book("params/smoke.yaml", overrides=fake_book, from_chapter="42")


def test_seed_replicas_run_before_the_main_seed_in_their_own_folder():
    from causal_lib.config import config_from_dict

    cfg = config_from_dict({"run": {"seed": 0, "seeds": [1, 2]}})
    runs = chapter_runs(cfg)
    labels = [r.label for r in runs]
    for stem in ("04_base_model", "05_train[causal]", "06_epoch_validation[struq]", "08_attack_evaluation"):
        i = labels.index(stem)
        assert labels[i - 2:i] == [f"{stem}@seed1", f"{stem}@seed2"], labels
    assert not any(lb.startswith(("01", "02", "03", "07", "09")) and "@" in lb for lb in labels)
    replica = next(r for r in runs if r.label == "05_train[causal]@seed2")
    ov = replica.overrides(cfg, {"run.output_root": "/x"})
    assert ov == {"run.output_root": "/x", "run.seed": 2, "run.seeds": [], "data.seed": 0,
                  "run.name": "default/seeds/seed_2"}
    sub = config_from_dict({"run": {"seed": 0, "seeds": [1, 2]}}, ov)
    from causal_lib.data.build import data_hash
    assert data_hash(sub) == data_hash(cfg)  # the replica trains on the main run's data and test set
    assert sub.run_dir == Path("/x") / "default" / "seeds" / "seed_2"
    main = next(r for r in runs if r.label == "05_train[causal]")
    assert main.overrides(cfg, {"a": 1}) == {"a": 1} and replica.out_stem == "05_train__causal__seed2"
    assert chapters.parse_label(replica.label) == ("05_train", "causal", 2)
    assert chapters.parse_label("07_causal_verification") == ("07_causal_verification", None, None)


@pytest.mark.parametrize("seeds", [[0, 1], [1, 1]])
def test_seeds_must_be_distinct_extras(seeds):
    from causal_lib.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="run.seeds"):
        config_from_dict({"run": {"seed": 0, "seeds": seeds}})


@pytest.fixture
def fake_runs(fake_book, monkeypatch):
    """The fake book with a stand-in for papermill: records which chapter runs executed, each 'ok'."""
    ran = []

    def execute(run, cfg, pf, ov, paths, **kw):
        ran.append(run.label)
        return {"label": run.label, "status": "ok", "error": None, "wall_s": 0, "peak_rss_gb": 0}

    monkeypatch.setattr(runner, "execute_chapter", execute)
    return ran


def test_resume_skips_unchanged_ok_chapters_and_records_hashes(fake_book, fake_runs, tmp_path, capsys):
    state = run_book("params/smoke.yaml", overrides=fake_book)
    assert fake_runs == ["01_ok", "02_variants[a]", "02_variants[b]", "03_fail", "04_after"]
    rec = state["chapters"]["02_variants[a]"]
    assert len(rec["source_hash"]) == 16 and len(rec["chapter_params_hash"]) == 16
    # the per-chapter params hash sees the chapter run's own parameters (defense a vs b)
    assert rec["chapter_params_hash"] != state["chapters"]["02_variants[b]"]["chapter_params_hash"]
    assert rec["source_hash"] == state["chapters"]["01_ok"]["source_hash"]  # same file bytes
    on_disk = json.loads((tmp_path / "outputs" / "smoke" / "metrics" / "chapters.json").read_text())
    assert on_disk["01_ok"]["source_hash"] == state["chapters"]["01_ok"]["source_hash"]
    capsys.readouterr()
    fake_runs.clear()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert fake_runs == []
    out = capsys.readouterr().out
    for label in ("01_ok", "02_variants[a]", "02_variants[b]", "03_fail", "04_after"):
        assert f"{label}: skipped: ok, unchanged" in out


def test_resume_reruns_a_chapter_whose_source_or_params_changed(fake_book, fake_runs, tmp_path, monkeypatch, capsys):
    run_book("params/smoke.yaml", overrides=fake_book)
    src = tmp_path / "notebooks" / "03_fail.py"
    src.write_text(src.read_text() + "\n# %%\nprint('edited')\n")
    capsys.readouterr()
    fake_runs.clear()
    state = run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    out = capsys.readouterr().out
    assert fake_runs == ["03_fail"]  # nothing after it is invalidated automatically
    assert "03_fail: source changed since it ran, running again" in out
    assert "04_after: skipped: ok, unchanged" in out
    assert state["chapters"]["03_fail"]["source_hash"] == hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    # the new hash was recorded: a second --resume skips it
    fake_runs.clear()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert fake_runs == []

    # a chapter run's own parameters (papermill parameters such as `defense`) count as its params
    monkeypatch.setattr(chapters, "CHAPTERS", [
        Chapter("01_ok"),
        Chapter("02_variants", variants=lambda cfg: [("a", {"defense": "a", "extra": 1}), ("b", {"defense": "b"})]),
        Chapter("03_fail"),
        Chapter("04_after"),
    ])
    capsys.readouterr()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert fake_runs == ["02_variants[a]"]
    assert "02_variants[a]: params changed since it ran, running again" in capsys.readouterr().out


def test_resume_reruns_failed_and_old_records_without_hashes(fake_book, fake_runs, tmp_path, capsys):
    run_book("params/smoke.yaml", overrides=fake_book)
    run_json = tmp_path / "outputs" / "smoke" / "run.json"
    state = json.loads(run_json.read_text())
    for k in ("source_hash", "chapter_params_hash"):  # a record written before the hashes were kept
        del state["chapters"]["01_ok"][k]
    state["chapters"]["02_variants[b]"]["status"] = "failed"
    del state["chapters"]["04_after"]
    run_json.write_text(json.dumps(state))
    capsys.readouterr()
    fake_runs.clear()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    out = capsys.readouterr().out
    assert fake_runs == ["01_ok", "02_variants[b]", "04_after"]
    assert "01_ok: recorded without source/params hashes (an older run record), running again" in out
    assert "02_variants[b]: last run failed, running again" in out
    assert "04_after: not run in this folder yet, running" in out
    assert "03_fail: skipped: ok, unchanged" in out


# ---- run names, chapter selection, lock, Ctrl-C, progress, console noise -------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from causal_lib.book.lock import RunLock  # noqa: E402
from causal_lib.book.plan import select_runs  # noqa: E402
from causal_lib.book.runner import main  # noqa: E402
from causal_lib.config import PROJECT_ROOT  # noqa: E402

DRIVER = Path(__file__).with_name("book_driver.py")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("how", ["--run", "--set", "params"])
@pytest.mark.parametrize("name", ["ABS", "../escaped", "../../escaped", "a/b", "..", ".", "a/../b", "sp ace", ""])
def test_run_names_must_be_plain_and_are_refused_before_anything_is_written(tmp_path, capsys, how, name):
    out_root = tmp_path / "out" / "outputs"
    name = str(tmp_path / "abs_run") if name == "ABS" else name
    args = ["run", "--params", "params/smoke.yaml", "--set", f"run.output_root={out_root}"]
    if how == "--run":
        args += ["--run", name]
    elif how == "--set":
        args += ["--set", f"run.name={name!r}"]
    else:
        pf = tmp_path / "p.yaml"
        pf.write_text((PROJECT_ROOT / "params" / "smoke.yaml").read_text().replace("name: smoke", f"name: {name!r}"))
        args[2] = str(pf)
    before = _tree(tmp_path)
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "refused" in err and "plain" in err, err
    assert _tree(tmp_path) == before  # nothing written, neither under outputs/ nor outside it
    assert not (tmp_path / "abs_run").exists() and not (tmp_path / "out" / "escaped").exists()


@pytest.mark.parametrize("root", ["../outside", "outputs/../../x", ""])
def test_output_root_must_not_leave_the_project(root):
    from causal_lib.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="run.output_root"):
        config_from_dict({"run": {"output_root": root}})
    assert config_from_dict({"run": {"output_root": "outputs/sub"}}).run_dir == PROJECT_ROOT / "outputs" / "sub" / "default"


def test_the_runners_seed_replica_names_are_valid():
    from causal_lib.config import config_from_dict

    cfg = config_from_dict({"run": {"name": "smoke", "seeds": [1]}})
    replica = next(r for r in chapter_runs(cfg) if r.seed == 1)
    sub = config_from_dict({"run": {"name": "smoke", "seeds": [1]}}, replica.overrides(cfg, {}))
    assert sub.run.name == "smoke/seeds/seed_1" and sub.run_dir == PROJECT_ROOT / "outputs" / "smoke" / "seeds" / "seed_1"


@pytest.mark.parametrize("only,expected", [
    (["01"], ["01_ok"]),
    (["02_variants"], ["02_variants[a]", "02_variants[b]"]),
    (["02_variants[b]", "04"], ["02_variants[b]", "04_after"]),
    (["04_after"], ["04_after"]),
])
def test_only_selects_by_exact_number_name_or_label(fake_book, fake_runs, only, expected):
    run_book("params/smoke.yaml", overrides=fake_book, only=only)
    assert fake_runs == expected


@pytest.mark.parametrize("option,value", [("only", ["zz"]), ("only", ["5"]), ("only", ["0"]), ("only", ["1"]),
                                          ("only", ["02_var"]), ("only", ["01", "zz"]), ("from_chapter", "0"),
                                          ("from_chapter", "2"), ("from_chapter", "02_variants[c]")])
def test_unknown_chapters_are_an_error_listing_the_chapters(fake_book, fake_runs, tmp_path, option, value):
    with pytest.raises(BookError, match="no such chapter") as e:
        run_book("params/smoke.yaml", overrides=fake_book, **{option: value})
    assert "01_ok" in str(e.value) and "02_variants[b]" in str(e.value) and "04_after" in str(e.value)
    assert fake_runs == [] and not (tmp_path / "outputs" / "smoke").exists()  # refused before anything is written


def test_only_on_the_real_book_and_the_command_line_exit_status(capsys):
    runs = chapter_runs(Config())
    assert {r.chapter.stem for r in select_runs(runs, only=["05"])} == {"05_train"}
    assert [r.label for r in select_runs(runs, only=["05_train[causal]"])] == ["05_train[causal]"]
    assert select_runs(runs, from_chapter="08")[0].label == "08_attack_evaluation"
    for bad in ("0", "5", "zz", "05_train[nope]"):
        with pytest.raises(BookError, match="no such chapter"):
            select_runs(runs, only=[bad])
    assert main(["run", "--params", "params/smoke.yaml", "--run", "never-made", "--only", "5"]) == 1
    assert "no such chapter" in capsys.readouterr().err
    assert not (PROJECT_ROOT / "outputs" / "never-made").exists()


def test_a_run_with_nothing_to_do_still_points_to_an_existing_index(fake_book, fake_runs, tmp_path, capsys):
    run_book("params/smoke.yaml", overrides=fake_book, only=["01"])
    capsys.readouterr()
    run_book("params/smoke.yaml", overrides=fake_book, only=["01"], resume=True)
    out = capsys.readouterr().out
    assert "0 chapter run(s)" in out and "nothing to run" in out
    assert (tmp_path / "outputs" / "smoke" / "html" / "index.html").exists()


def test_a_locked_run_folder_is_refused_with_the_holders_pid_and_a_stale_lock_taken_over(fake_book, fake_runs,
                                                                                         tmp_path, capsys):
    run_dir = tmp_path / "outputs" / "smoke"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = run_dir / RunLock.NAME
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "created": time.time(),
                                    "started": "now"}))
        with pytest.raises(BookError, match=f"in use by another book run \\(pid {holder.pid}"):
            run_book("params/smoke.yaml", overrides=fake_book)
        assert fake_runs == [] and not (run_dir / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    capsys.readouterr()
    run_book("params/smoke.yaml", overrides=fake_book, only=["01"])  # the holder is gone: stale lock
    out = capsys.readouterr().out
    assert "taking over the stale lock" in out and f"pid {holder.pid}" in out and "no longer running" in out
    assert fake_runs == ["01_ok"] and not lock.exists()  # released at the end


def _driver(work: Path, *args, heartbeat=20.0, sleep=120.0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(DRIVER), str(work), "--heartbeat", str(heartbeat), "--sleep",
                             str(sleep), "--", "run", "--params", "params/smoke.yaml",
                             "--set", f"run.output_root={work / 'outputs'}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(PROJECT_ROOT))


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow
def test_ctrl_c_stops_chapter_and_kernel_with_one_line_and_the_resume_command(tmp_path):
    proc = _driver(tmp_path, "--resume", heartbeat=2.0, sleep=120.0)
    pid_file = tmp_path / "kernel.pid"
    t0 = time.time()
    while not pid_file.exists() or not pid_file.read_text():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 180, "the first chapter's kernel never started"
        time.sleep(0.2)
    kernel = int(pid_file.read_text())
    time.sleep(6)  # the chapter is running: its progress lines and a heartbeat (every 2 s here) are on the console
    # a second book run into the same folder meanwhile is refused, naming the running one's pid
    second = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "second"), "--", "run", "--params",
                             "params/smoke.yaml", "--set", f"run.output_root={tmp_path / 'outputs'}"],
                            capture_output=True, text=True, cwd=str(PROJECT_ROOT), timeout=120)
    assert second.returncode == 1 and f"pid {proc.pid}" in second.stderr, second.stderr
    assert "01_slow" in json.loads((tmp_path / "outputs" / "smoke" / "run.json").read_text()).get("chapters", {}) \
        or True  # (the running book's own records are untouched by the refused one)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped 01_slow and its kernel"), out
    assert "--resume" in last and "python -m causal_lib.book run --params params/smoke.yaml" in last
    assert [ln for ln in out.splitlines() if "interrupted" in ln] == [last]
    assert "slow: step 3/3" in out and "still running 01_slow" in out  # progress lines and the heartbeat
    deadline = time.time() + 10
    while _pid_alive(kernel) and time.time() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(kernel), "the chapter's kernel outlived Ctrl-C"
    state = json.loads((tmp_path / "outputs" / "smoke" / "run.json").read_text())
    assert state["chapters"]["01_slow"]["status"] == "interrupted"
    assert not (tmp_path / "outputs" / "smoke" / RunLock.NAME).exists()
    # --resume runs it again, and says why
    proc = _driver(tmp_path, "--resume", sleep=0.1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "01_slow: last run interrupted, running again" in out and "02_ok: not run in this folder yet" in out


TQDM_NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
# %%
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="Loading weights"):
    pass
from transformers.utils import logging as hf_logging
print("hf progress bars enabled:", hf_logging.is_progress_bar_enabled())
'''
RESUME_NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
resume = False
# %%
print("resume is", resume)
'''


@pytest.mark.slow
def test_console_has_no_kernel_warnings_nor_unknown_parameters_and_html_no_progress_bars(tmp_path, monkeypatch, capfd):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "01_tqdm.py").write_text(TQDM_NB)
    (nbdir / "02_resume.py").write_text(RESUME_NB)
    monkeypatch.setattr(chapters, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(chapters, "CHAPTERS", [Chapter("01_tqdm"), Chapter("02_resume")])
    overrides = {"run.output_root": str(tmp_path / "outputs")}
    run_book("params/smoke.yaml", overrides=overrides, resume=True)
    out, err = capfd.readouterr()
    console = out + err
    assert "eavesdropping" not in console and "IPKernelApp" not in console, console
    assert "unknown parameter" not in console.lower(), console
    run_dir = tmp_path / "outputs" / "smoke"
    nb = json.loads((run_dir / "notebooks" / "01_tqdm.ipynb").read_text())
    outputs = json.dumps([o for c in nb["cells"] for o in c.get("outputs", [])])
    assert "Loading weights" not in outputs and "it/s" not in outputs and "3/3" not in outputs, outputs
    assert "hf progress bars enabled: False" in outputs
    assert "3/3 [" not in (run_dir / "html" / "01_tqdm.html").read_text()
    assert "resume is True" in (run_dir / "html" / "02_resume.html").read_text()  # declared: passed
    injected = "".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in nb["cells"]
                       if "injected-parameters" in c["metadata"].get("tags", []))
    assert "resume" not in injected  # not declared in 01: not passed
    assert "params/smoke.yaml" in injected and str(PROJECT_ROOT) not in injected


def test_progress_report_is_a_no_op_outside_the_book_and_throttled_inside(tmp_path, monkeypatch):
    from causal_lib.core import progress
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.report("x: nothing", force=True) is False
    f = tmp_path / "p.log"
    monkeypatch.setenv(progress.ENV, str(f))
    assert progress.report("train a: step 1", key="t") is True
    assert progress.report("train a: step 2", key="t") is False  # within 10 s of the last line
    assert progress.report("train a: done", key="t", force=True) is True
    assert f.read_text().splitlines() == ["train a: step 1", "train a: done"]
    assert progress.eta(5, 10, 10.0) == "5/10, 10 s elapsed, ETA 10 s"


def test_training_reports_step_loss_and_eta_to_the_progress_file(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from causal_lib.core import progress
    from causal_lib.training.trainer import ConsoleProgress

    f = tmp_path / "p.log"
    monkeypatch.setenv(progress.ENV, str(f))
    monkeypatch.setattr(progress, "_last", {})
    cb, state = ConsoleProgress("causal"), SimpleNamespace(global_step=0, max_steps=10)
    cb.on_train_begin(None, state, None)
    cb.on_log(None, state, None, logs={"loss": 1.5})
    for step in range(1, 11):
        state.global_step = step
        cb.on_step_end(None, state, None)
    lines = f.read_text().splitlines()
    assert lines[0].startswith("train causal: step 1/10, loss 1.5 (1/10,") and "ETA" in lines[0]
    assert lines[-1].startswith("train causal: step 10/10") and len(lines) == 2  # throttled, the last forced


@pytest.mark.parametrize("name", ["../../etc", "/etc", "a/b", ".."])
def test_archive_refuses_run_names_that_are_not_plain(name, capsys):
    from causal_lib.book import share

    assert share.main(["archive", "--run", name]) == 2
    assert "refused" in capsys.readouterr().err


def test_the_kernel_is_not_interrupted_when_it_is_shut_down():
    """jupyter_client interrupts before a shutdown; on an idle kernel that only races with the shutdown request
    and prints "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." (seen once in a smoke book)."""
    import asyncio

    km = kernel._kernel_manager_class()(kernel_name="python3")
    sent = []
    km.signal_kernel = lambda sig: sent.append(sig)  # would be the SIGINT to the kernel's process group
    km._async_signal_kernel = lambda sig: sent.append(sig)
    km.shutting_down = True
    asyncio.run(km._async_interrupt_kernel())
    assert sent == []
