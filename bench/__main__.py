"""`python -m bench [--quick] [--backend ...]`: the service benchmark (bench/bench.py)."""

import sys

from bench.bench import main

sys.exit(main(sys.argv[1:]))
