"""Training and evaluation on 2 processes for real (DDP, gloo, CPU; causal_lib.core.distributed), on the smoke
params made small: the shipped tiny base (so that the models answer something), 64 training pairs, 24 test items.

(a) the loss curve of 2 processes equals one process's with the same global batch (train.batch_size) within
    LOSS_RTOL (measured 2026-12-07: equal to the 5th decimal; StruQ, i.e. SFT, where the whole loss is L_task);
(b) the model saved by the 2-process run evaluates to the same metrics as the one-process model;
(c) a killed rank fails the run with one clear line, and --resume completes it from the last complete checkpoint;
(d) evaluation sharded over 2 processes equals the one-process evaluation item by item;
plus: the params-hash guard holds across ranks (a folder of other params is refused in one line).
plus the causal objective: on 2 processes every logged part (loss, L_task, L_causal, L_spurious, grad norm) equals
one process's (measured 2026-12-07: to the 5th decimal over 8 steps).
About 4 min on the 2-core CPU.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LOSS_RTOL = 1e-3  # per logged step, relative; what differs is the order of float sums over the two halves
GRAD_RTOL = 1e-3

pytestmark = pytest.mark.slow


def _params(tmp: Path, out_root: Path, epochs: int) -> Path:
    d = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    d["run"].update(output_root=str(out_root), torch_threads=1)  # one thread per process
    d["data"].update(n_train=64, n_val=8, n_test=24, n_base_corpus=10, n_benign_lookalikes=8, n_sep_probes=8)
    d["base"] = {"source": "shipped"}  # the shipped tiny base (params/tiny.yaml's shape): a model that answers
    d["model"]["tiny"] = {"vocab_size": 2048, "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 8,
                          "intermediate_size": 512}
    d["train"].update(epochs=epochs, base_curriculum=[], val_pairs=8)
    p = tmp / f"params_{out_root.name}_{epochs}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None), env.pop("RANK", None)
    return env


def _run(args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _train(params: Path, defense: str, *extra: str):
    return _run(["-m", "causal_lib.training", "--params", str(params), "--defense", defense, *extra])


def _evaluate(params: Path, jobs: list[tuple[Path, Path, int]]) -> list[dict]:
    """Evaluate (run folder, --out, processes) jobs at the same time (the machine has 2 cores) -> their results."""
    procs = []
    for run, out, processes in jobs:
        launcher = (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
                    if processes > 1 else [])
        procs.append(subprocess.Popen(
            [sys.executable, *launcher, "-m", "causal_lib.evaluation", "--model",
             str(run / "checkpoints" / "struq" / "best_model"), "--data-dir", str(run / "data"), "--params", str(params),
             "--out", str(out), "--defense-name", "struq"],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.read_text()) for _, out, _ in jobs]


def _log(run: Path, name="struq"):
    rows = [json.loads(x) for x in (run / "metrics" / f"train_{name}_log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "loss" in r]


def _reports(result, prefix: str) -> bool:
    """Whether the run printed its report line (libraries may print lines of their own before it, e.g. transformers
    under WANDB_MODE=offline, as on the CI machine)."""
    return any(line.startswith(prefix) for line in result.stdout.splitlines())


def _copy_prepared(src: Path, root: Path, keep_state: bool = True) -> Path:
    dest = root / src.name
    # the prepared folder alone (data, tokenizer, base), not what another test trained in it
    shutil.copytree(src, dest, ignore=lambda d, names: [n for n in names if n == "struq" or n.startswith("train_struq")])
    if not keep_state:
        (dest / "run.json").unlink()
    return dest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run folder with data and the shipped base installed (one process), copied for each run below."""
    tmp = tmp_path_factory.mktemp("ddp")
    params = _params(tmp, tmp / "one", epochs=2)
    r = _train(params, "base")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, params, tmp / "one" / "smoke"


def test_two_processes_train_and_evaluate_as_one(prepared):
    tmp, params, one = prepared
    two = _copy_prepared(one, tmp / "two")
    t0 = time.time()
    r1 = _train(params, "struq")
    t1 = time.time()
    r2 = _train(params, "struq", "--set", f"run.output_root={two.parent}", "--num-processes", "2")
    t2 = time.time()
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert _reports(r2, "struq: 8 steps"), r2.stdout
    print(f"\none process {t1 - t0:.1f} s, two processes {t2 - t1:.1f} s (wall, start-up included)")

    # (a) the same steps on the same examples: the loss curves agree within LOSS_RTOL at every logged step
    a, b = _log(one), _log(two)
    assert [x["step"] for x in a] == [x["step"] for x in b] and len(a) == 8
    for x, y in zip(a, b):
        print(f"step {x['step']}: loss {x['loss']:.5f} (1 process) {y['loss']:.5f} (2 processes)")
        assert y["loss"] == pytest.approx(x["loss"], rel=LOSS_RTOL), (x, y)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=GRAD_RTOL), (x, y)
    # only rank 0 wrote: one log line per step, each rank's RNG state in each complete checkpoint
    ckpts = sorted((two / "checkpoints" / "struq" / "trainer").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-4", "checkpoint-8"]
    assert all((c / "COMPLETE").exists() and (c / "rng_state_0.pth").exists() and (c / "rng_state_1.pth").exists()
               for c in ckpts)
    assert not list(two.rglob("*.tmp*")) and not list(two.rglob("*.old-*"))

    # (b) the saved models evaluate to the same metrics; (d) sharded evaluation equals one process item by item
    ev_one, ev_two = _evaluate(params, [(one, tmp / "ev_one.json", 1), (two, tmp / "ev_two.json", 1)])
    ev_sharded, = _evaluate(params, [(two, tmp / "ev_sharded.json", 2)])
    assert ev_two["summary"]["asr"] == ev_one["summary"]["asr"]
    assert ev_two["summary"]["benign_accuracy"] == ev_one["summary"]["benign_accuracy"]
    items, sharded = ev_two["items"], ev_sharded["items"]
    assert len(items) == len(sharded) > 64  # more than one generation batch (eval.batch_size 64): both ranks worked
    assert any(i["output"] for i in items)  # the shipped base answers: the comparison is not between empty strings
    assert [i["id"] for i in sharded] == [i["id"] for i in items]
    assert [i["output"] for i in sharded] == [i["output"] for i in items]
    assert ev_sharded["summary"] == ev_two["summary"]


def test_killed_rank_fails_in_one_line_and_resume_completes(prepared):
    tmp, _, one = prepared
    params = _params(tmp, tmp / "kill", epochs=3)  # 12 steps, 4 per epoch: killed after epoch 1
    run = _copy_prepared(one, tmp / "kill", keep_state=False)
    cmd = [sys.executable, "-m", "causal_lib.training", "--params", str(params), "--defense", "struq",
           "--num-processes", "2"]
    done = run / "checkpoints" / "struq" / "trainer" / "checkpoint-4" / "COMPLETE"
    assert not done.exists()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None and not done.exists():
            time.sleep(0.05)
        assert done.exists(), "the first epoch's checkpoint never completed"
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == "1":
                    victim = child
            except psutil.Error:
                pass
        assert victim is not None and proc.poll() is None, "rank 1 not found running"
        victim.kill()
        out, err = proc.communicate(timeout=120)
    finally:  # a failed test leaves no process behind
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.communicate()
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1, err
    assert "rank 1 ended with signal 9 (SIGKILL)" in lines[0] and "--resume" in lines[0], lines[0]

    r = _run(cmd[1:] + ["--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _reports(r, "struq: 12 steps"), r.stdout
    log = _log(run)
    assert [x["step"] for x in log] == list(range(1, 13))  # what the killed run logged after step 4 was dropped
    assert (run / "checkpoints" / "struq" / "best_model" / "checkpoint.json").exists()
    assert sorted(p.name for p in (run / "checkpoints" / "struq").glob("epoch_*")) == [f"epoch_{i}" for i in range(1, 4)]


def test_params_hash_guard_holds_across_ranks(prepared, tmp_path):
    tmp, _, one = prepared
    other = _params(tmp_path, one.parent, epochs=5)  # same folder, other params
    r = _train(other, "struq", "--num-processes", "2")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "other params" in lines[0]


def test_the_causal_objective_on_two_processes_is_the_one_process_objective(prepared):
    """L_causal's centring and mean and L_spurious's task groups are batch-level: on 2 processes they are computed
    over both ranks' rows (distributed.global_rows), so every logged part equals one process's."""
    tmp, params, one = prepared
    two = _copy_prepared(one, tmp / "two_causal")
    r1 = _train(params, "causal")
    r2 = _train(params, "causal", "--set", f"run.output_root={two.parent}", "--num-processes", "2")
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _log(one, "causal"), _log(two, "causal")
    assert [x["step"] for x in a] == [x["step"] for x in b] and len(a) == 8
    for x, y in zip(a, b):
        print(f"step {x['step']}: " + ", ".join(f"{k} {x[k]:.5f}/{y[k]:.5f}" for k in
                                                 ("loss", "loss_task", "loss_causal", "loss_spurious")))
        for k in ("loss", "loss_task", "loss_causal", "loss_spurious", "grad_norm"):
            assert y[k] == pytest.approx(x[k], rel=LOSS_RTOL, abs=1e-6), (k, x, y)
    assert any(x["loss_spurious"] > 0 for x in a)  # the HSIC term was active on some step (groups across ranks)


def test_chapter_05_trains_secalign_on_two_processes_inside_the_books_lock(prepared):
    """Chapter 05 with run.num_processes: 2 (book.train.train_defense) launches the training command on 2 processes
    from the chapter's own process while the book run holds the run lock: the ranks join that lock (they are the
    book's), rank 0 alone writes, the chapter gets rank 0's result back, and SecAlign's DPO on 2 processes logs the
    one-process curve (TRL's DPOTrainer under DDP: its reference pass and loss on each rank's half)."""
    from causal_lib.book import train as book_train
    from causal_lib.book.lock import RunLock, open_run_folder
    from causal_lib.config import load_config

    tmp, params, one = prepared
    r1 = _train(params, "secalign")
    assert r1.returncode == 0, r1.stderr[-3000:]
    two = _copy_prepared(one, tmp / "chapter05")
    overrides = {"run.output_root": str(two.parent), "run.num_processes": 2}
    cfg = load_config(params, overrides)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with open_run_folder(cfg, params):  # what the book runner holds while chapter 05 runs
        token = json.loads((two / RunLock.NAME).read_text())["token"]
        cfg2, paths, result = book_train.train_defense(params, overrides, "secalign")
        lock = json.loads((two / RunLock.NAME).read_text())
        assert lock["pid"] == os.getpid() and lock["token"] == token  # the book's lock: joined, left in place
    assert not (two / RunLock.NAME).exists()
    # the launch leaves this (long-lived, like a kernel) process as it found it
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert "CAUSAL_PI_LAUNCHER_PID" not in os.environ and "CAUSAL_PI_STATUS_DIR" not in os.environ
    assert paths.root == two and result.steps == 8 and result.best_epoch in (1, 2) and set(result.epochs) == {1, 2}
    assert (two / "checkpoints" / "secalign" / "best_model" / "checkpoint.json").exists()
    a, b = _log(one, "secalign"), _log(two, "secalign")
    assert [x["step"] for x in a] == [x["step"] for x in b] and len(a) == 8
    for x, y in zip(a, b):
        print(f"step {x['step']}: loss {x['loss']:.5f} (1 process) {y['loss']:.5f} (2 processes)")
        assert y["loss"] == pytest.approx(x["loss"], rel=LOSS_RTOL, abs=1e-6), (x, y)
    # a lock held by another run refuses the chapter in one line, before any process starts
    other = _copy_prepared(one, tmp / "locked")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (other / RunLock.NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                      "created": time.time(), "started": "now", "token": "theirs"}))
        with pytest.raises(Exception, match="in use by another book run"):
            book_train.train_defense(params, {"run.output_root": str(other.parent), "run.num_processes": 2}, "secalign")
    finally:
        holder.kill()
        holder.wait()
