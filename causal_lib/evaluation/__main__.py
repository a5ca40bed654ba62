"""`python -m causal_lib.evaluation`: see causal_lib.evaluation.cli."""
import sys

try:
    from causal_lib.evaluation.cli import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C while torch and transformers load (main() handles it once running)
    print("interrupted: the evaluation stopped before it started, nothing was written; run the same command "
          "again", file=sys.stderr)
    sys.exit(130)
