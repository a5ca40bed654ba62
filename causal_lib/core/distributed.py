"""Several processes: training with DDP (HF Trainer under `accelerate launch` / `torchrun`; gloo on the CPU, NCCL on
GPUs) and evaluation split by rank, with one code path: in one process every function here is the identity.

Who does what when WORLD_SIZE > 1 (README "More than one machine"):
- rank 0 alone takes the run lock, checks or records the params hash (run.json), builds the dataset and anything
  else a run writes before training (the tiny model's tokenizer); the other ranks wait for it (`main_first`) and then
  only check the folder it prepared (run_folder.start). A refusal on rank 0 stops every rank; only rank 0 prints it.
- train.batch_size stays the global batch: each of N processes takes batch_size / N examples per step, so a run's
  optimizer steps and the examples of each step are those of one process (`per_process_batch`).
- only rank 0 writes checkpoints, logs, metrics and the COMPLETE marker of a Trainer checkpoint (after a barrier, so
  a checkpoint counts only once every rank's RNG state is in it).
- generation (`models.generate.generate_ids`) gives batch b to rank b % N and gathers the answers in item order.
- the causal objective (defenses/causal.py) is the one-process objective on the global batch: L_causal's centring
  and mean and L_spurious's task groups are computed over every rank's rows (`global_rows`), L_task is each rank's
  token mean weighted by its share of the global batch's response tokens.

`launch` starts N local processes itself (`python -m causal_lib.training --num-processes N`): it is
`torchrun --standalone` plus one clear line when a process fails (which rank, how, and the --resume command).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

STATUS_DIR_ENV = "CAUSAL_PI_STATUS_DIR"  # set by `launch`: each rank writes rank_<r>.json (its exit code and line)
LAUNCHER_PID_ENV = "CAUSAL_PI_LAUNCHER_PID"  # set by `launch`: the process the ranks belong to (watch_launcher)


class RankStopped(RuntimeError):
    """Rank 0 refused the run (its line says why); this rank stops without a line of its own."""


def world_size() -> int:
    """Processes of the run as the launcher says (WORLD_SIZE; 1 without a launcher)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def local_world_size() -> int:
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "") or world_size()), 1)
    except ValueError:
        return world_size()


def is_main_process() -> bool:
    return rank() == 0


def active() -> bool:
    """A process group of more than one process is up (init has run under a launcher)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init() -> bool:
    """Join the launcher's process group (gloo on the CPU, NCCL when CUDA is there) -> whether one is up.
    A no-op in one process; the Trainer's accelerate state then reuses the group."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj):
    """Rank 0's `obj` on every rank (any picklable object)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard() -> tuple[int, int]:
    """(this process's rank, number of processes) for splitting work; (0, 1) without a process group."""
    if not active():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def gather_filled(out: list) -> list:
    """Every rank filled its own positions of `out` (the others stay None) -> the list with all of them, in order,
    on every rank. The identity in one process."""
    if not active():
        return out
    import torch.distributed as dist

    mine = {i: v for i, v in enumerate(out) if v is not None}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    merged = list(out)
    for part in parts:
        for i, v in part.items():
            merged[i] = v
    return merged


def all_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over processes of each value (same keys on every rank); the identity in one process."""
    if not active() or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def global_rows(t):
    """All processes' rows of `t` (the same trailing shape on every rank) concatenated in rank order: the global
    batch, with this rank's own rows the tensor given (gradients flow into them) and the others' rows detached copies.
    A loss computed on the global batch is then the same number on every rank, and the backward pass on a rank
    reaches its own rows only: DDP's average of the ranks' gradients is 1/N of the one-process gradient, so a
    caller scales such a loss by world_size() for the backward pass (defenses/causal.py). The identity in one
    process. Ranks may hold different row counts (a short last batch)."""
    if not active():
        return t
    import torch
    import torch.distributed as dist

    n = dist.get_world_size()
    count = torch.tensor([t.shape[0]], dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(n)]
    dist.all_gather(counts, count)
    m = int(max(int(c) for c in counts))
    padded = torch.cat([t.detach(), t.new_zeros((m - t.shape[0],) + tuple(t.shape[1:]))]) if m > t.shape[0] else t.detach()
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded.contiguous())
    me = dist.get_rank()
    return torch.cat([t if k == me else parts[k][:int(counts[k])] for k in range(n)])


def all_sum(x: float) -> float:
    """The sum over processes of one number; the identity in one process."""
    if not active():
        return x
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def main_first(prepare):
    """Run `prepare()` on rank 0 while the other ranks wait; -> its result on rank 0, None elsewhere.
    An exception on rank 0 is re-raised there and stops the others with RankStopped (rank 0's line says why)."""
    if not active():
        return prepare()
    if is_main_process():
        try:
            result = prepare()
        except BaseException as e:
            broadcast(f"{type(e).__name__}: {e}")
            raise
        broadcast(None)
        return result
    failed = broadcast(None)
    if failed is not None:
        raise RankStopped(failed)
    return None


def per_process_batch(batch_size: int, what: str = "train.batch_size") -> int:
    """train.batch_size is the global batch: each of the N processes takes batch_size / N examples per step."""
    n = world_size()
    if batch_size % n:
        from causal_lib.config import ConfigError

        raise ConfigError(f"{what}={batch_size} is the global batch and must divide by the {n} processes; "
                          f"set it to a multiple of {n} (e.g. {max(n, batch_size - batch_size % n)})")
    return batch_size // n


def is_collective_failure(e: BaseException) -> bool:
    """An error raised because another process of the group went away (gloo/NCCL connection or timeout)."""
    try:
        import torch.distributed as dist

        if isinstance(e, getattr(dist, "DistError", ())):
            return True
    except ImportError:
        pass
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "connection closed", "connection reset", "gloo", "nccl", "broken pipe", "timed out", "socket"))


def watch_launcher(poll_s: float = 2.0) -> None:
    """Under `launch`: end this rank when the process that launched it is gone (a chapter's kernel killed at its
    timeout): the ranks run in sessions of their own, which the kernel's process group does not reach, and would
    otherwise go on writing into a run folder whose lock has been released. A daemon thread; nothing elsewhere."""
    pid = os.environ.get(LAUNCHER_PID_ENV)
    if not pid or not pid.isdigit():
        return
    import threading

    def watch():
        import time

        while True:
            time.sleep(poll_s)
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os._exit(3)
            except OSError:
                pass

    threading.Thread(target=watch, name="causal-pi-launcher-watch", daemon=True).start()


def write_status(rc: int, line: str | None, result: dict | None = None) -> None:
    """Under `launch`: this rank's exit code, the line it printed and what it returns to the launcher (a JSON
    mapping, e.g. the training result) in rank_<r>.json of the launcher's folder."""
    d = os.environ.get(STATUS_DIR_ENV)
    if d and Path(d).is_dir():
        Path(d, f"rank_{rank()}.json").write_text(json.dumps({"rank": rank(), "rc": rc, "line": line,
                                                               "result": result}))


def _signal_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def launch(module: str, argv: list[str], n: int, what: str, resume_cmd: str) -> tuple[int, str | None, dict | None]:
    """Run `python -m <module> <argv>` on `n` local processes (torchrun --standalone: a free port, no restarts)
    -> (exit code, the one line to print, rank 0's result as it wrote it with write_status). The ranks' own output
    goes to a temporary folder, named in the line of a failure and removed after a success; rank 0's line (its
    result, or its refusal) is the line."""
    if n < 1:
        raise ValueError(f"--num-processes {n}: must be at least 1")
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # our line, not the agent's logging
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    status = Path(tempfile.mkdtemp(prefix="causal-pi-ranks-"))
    # what the launch changes in this process, put back at the end: it may be a long-lived one (a chapter's kernel)
    env_before = {k: os.environ.get(k) for k in (STATUS_DIR_ENV, "OMP_NUM_THREADS", LAUNCHER_PID_ENV)}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    os.environ[STATUS_DIR_ENV] = str(status)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # the ranks end when this process does (watch_launcher)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default: run_folder.start sets the threads per rank
    run_id = uuid.uuid4().hex[:8]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=run_id, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1, start_method="spawn",
                          logs_specs=DefaultLogsSpecs(log_dir=str(status / "logs"), redirects=Std.ALL))
    failures = {}
    try:
        elastic_launch(config, sys.executable)("-u", "-m", module, *argv)
    except ChildFailedError as e:
        failures = e.failures
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for sig, handler in handlers.items():  # torch elastic installs its own and leaves them
            if handler is not None:
                signal.signal(sig, handler)
    reports = {}
    for f in status.glob("rank_*.json"):
        try:
            r = json.loads(f.read_text())
            reports[int(r["rank"])] = r
        except (OSError, ValueError, KeyError):
            pass
    main = reports.get(0, {})
    if not failures:
        shutil.rmtree(status, ignore_errors=True)
        return int(main.get("rc", 0)), main.get("line"), main.get("result")
    # the root cause: a rank that failed without reporting a handled error (killed, crashed); else rank 0's refusal
    silent = sorted(r for r in failures if r not in reports)
    if not silent and main.get("line"):
        shutil.rmtree(status, ignore_errors=True)
        return int(main.get("rc") or 2), main["line"], None
    # the launcher stops the other ranks with SIGTERM once one has failed: the cause is the one that was not stopped so
    r = sorted(silent or failures, key=lambda k: (failures[k].exitcode == -signal.SIGTERM, failures[k].timestamp, k))[0]
    fail = failures[r]
    logs = next(iter(sorted(status.glob(f"logs/**/{fail.local_rank}/stderr.log"))), status / "logs")
    return (3, f"error: {what} on {n} processes stopped: rank {r} ended with {_signal_text(fail.exitcode)}; "
               f"the last complete checkpoint is kept, continue with: {resume_cmd} (the ranks' output: {logs})", None)


def threads_per_process(threads: int) -> int:
    """run.torch_threads is the machine's budget: on the CPU, N local processes take threads / N each (at least 1)."""
    try:
        import torch

        if torch.cuda.is_available():
            return threads
    except ImportError:
        pass
    return max(1, threads // local_world_size())
