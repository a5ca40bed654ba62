"""A book run in a subprocess on a fake, quick set of notebooks (tests/test_book.py): a user's `python -m
causal_lib.book run ...`, with chapters.NOTEBOOKS/CHAPTERS pointing at notebooks written here.

    python tests/book_driver.py WORKDIR [--heartbeat S] -- ARGS...   (ARGS as for `python -m causal_lib.book`)

WORKDIR/notebooks gets 01_slow.py (reports progress, then sleeps silently, writing its kernel's pid to
WORKDIR/kernel.pid first) and 02_ok.py.
"""
import sys
from pathlib import Path

from causal_lib.book import chapters, kernel, runner

SLOW_NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
# %%
import os, time
from causal_lib.core import progress
open(PID_FILE, "w").write(str(os.getpid()))
for i in range(3):
    progress.report(f"slow: step {i + 1}/3", force=True)
    time.sleep(0.5)
time.sleep(SLEEP)
print("VERDICT 01_slow: PASS")
'''
OK_NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
# %%
print("VERDICT 02_ok: PASS")
'''


def main(argv):
    work = Path(argv[0])
    heartbeat, sleep = 20.0, 120.0
    rest = argv[1:]
    while rest and rest[0] != "--":
        opt, val, rest = rest[0], rest[1], rest[2:]
        if opt == "--heartbeat":
            heartbeat = float(val)
        elif opt == "--sleep":
            sleep = float(val)
    args = rest[1:]
    nb = work / "notebooks"
    nb.mkdir(parents=True, exist_ok=True)
    (nb / "01_slow.py").write_text(SLOW_NB.replace("PID_FILE", repr(str(work / "kernel.pid"))).replace("SLEEP", repr(sleep)))
    (nb / "02_ok.py").write_text(OK_NB)
    chapters.NOTEBOOKS = nb
    chapters.CHAPTERS = [chapters.Chapter("01_slow"), chapters.Chapter("02_ok")]
    kernel.HEARTBEAT_S = heartbeat
    return runner.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
