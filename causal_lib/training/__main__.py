"""`python -m causal_lib.training`: see causal_lib.training.cli."""
import sys

from causal_lib.training.cli import main

sys.exit(main())
