"""`python -m causal_lib.book`: see causal_lib.book.runner."""
import sys

from causal_lib.book.runner import main

sys.exit(main())
