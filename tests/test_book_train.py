"""Chapter 05 on several processes (book.train) without starting any: the run lock's holder passes it to the
processes it starts, a seed replica's folder is named to the training command as the same folder, and
run.num_processes stays out of the params hash (the 2-process runs themselves: tests/test_distributed.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from causal_lib.book import train as book_train
from causal_lib.book.lock import HELD_LOCKS_ENV, RunLock
from causal_lib.config import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parent.parent
ENTER = ("import sys; from causal_lib.book.lock import RunLock\n"
         "with RunLock(sys.argv[1]) as lock: print('joined' if lock.joined else 'took')")


def _enter_in_child(folder: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTER, str(folder)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_process_started_by_the_lock_holder_joins_the_lock_and_a_stranger_is_refused(tmp_path):
    env_before = os.environ.get(HELD_LOCKS_ENV)
    with RunLock(tmp_path) as lock:
        assert not lock.joined and os.environ[HELD_LOCKS_ENV].split()[-1] == json.loads(lock.path.read_text())["token"]
        child = _enter_in_child(tmp_path, dict(os.environ))  # inherits the holder's token, as its kernels' children do
        assert child.returncode == 0 and child.stdout.strip() == "joined", child.stderr
        assert lock.path.exists() and json.loads(lock.path.read_text())["pid"] == os.getpid()  # left in place
        stranger = _enter_in_child(tmp_path, {k: v for k, v in os.environ.items() if k != HELD_LOCKS_ENV})
        assert stranger.returncode != 0 and "in use by another book run" in stranger.stderr
    assert not lock.path.exists() and os.environ.get(HELD_LOCKS_ENV) == env_before  # released, token dropped


def test_a_seed_replicas_folder_is_the_same_folder_and_hash_for_the_training_command(tmp_path):
    overrides = {"run.output_root": str(tmp_path), "run.name": "smoke/seeds/seed_1", "run.seed": 1, "data.seed": 0,
                 "run.num_processes": 2}
    cfg = load_config("params/smoke.yaml", overrides)
    argv = book_train.training_command("params/smoke.yaml", overrides, cfg, "causal")
    sets = parse_overrides(argv[argv.index("--set") + 1:])
    child = load_config(argv[argv.index("--params") + 1], sets)
    assert "/" not in child.run.name and child.run_dir == cfg.run_dir == tmp_path / "smoke" / "seeds" / "seed_1"
    assert child.params_hash() == cfg.params_hash() and child.run.num_processes == 2


def test_num_processes_is_outside_the_params_hash_and_must_divide_the_global_batch():
    one = load_config("params/smoke.yaml")
    assert load_config("params/smoke.yaml", {"run.num_processes": 2}).params_hash() == one.params_hash()
    with pytest.raises(ConfigError, match="must divide by run.num_processes=3"):
        load_config("params/smoke.yaml", {"run.num_processes": 3, "train.batch_size": 8})


def test_a_process_that_joins_the_lock_checks_the_params_hash_and_writes_no_record(tmp_path):
    from causal_lib.book.common import BookError
    from causal_lib.book.lock import open_run_folder
    from causal_lib.config import resolve_params_path

    params = resolve_params_path("params/smoke.yaml")
    cfg = load_config(params, {"run.output_root": str(tmp_path)})
    with RunLock(cfg.run_dir):  # the chapter's (or the book's) lock; open_run_folder below is one of its ranks
        with open_run_folder(cfg, params) as (paths, state):
            assert state == {} and not (paths.root / "run.json").exists()  # a seed replica's folder keeps none
        (cfg.run_dir / "run.json").write_text(json.dumps({"params_hash": "0123456789abcdef", "chapters": {}}))
        with pytest.raises(BookError, match="holds a run made with other params"):
            with open_run_folder(cfg, params):
                pass
        assert (cfg.run_dir / RunLock.NAME).exists()  # the holder's lock stays


def test_a_rank_ends_when_its_launcher_is_gone(tmp_path):
    """distributed.watch_launcher: the ranks run in sessions of their own; when the process that launched them (a
    chapter's kernel) is killed they end too, instead of writing into a run folder whose lock is released."""
    import time

    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code = ("from causal_lib.core import distributed; import time\n"
            "distributed.watch_launcher(poll_s=0.1)\ntime.sleep(30)")
    rank = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            env=dict(os.environ, CAUSAL_PI_LAUNCHER_PID=str(launcher.pid)))
    try:
        time.sleep(1.0)
        assert rank.poll() is None  # its launcher runs: it goes on
        launcher.kill()
        launcher.wait()
        assert rank.wait(timeout=20) == 3
    finally:
        for p in (launcher, rank):
            if p.poll() is None:
                p.kill()
                p.wait()
