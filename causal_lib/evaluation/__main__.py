"""`python -m causal_lib.evaluation`: see causal_lib.evaluation.cli."""
import sys

from causal_lib.evaluation.cli import main

sys.exit(main())
