"""`python -m bench [--quick] [--backend ...]`: the service benchmark (bench/bench.py);
`python -m bench bulk [--rows N] ...`: `zsc bulk` against (c) and the jobs API (bench/bench_bulk.py)."""

import sys

if sys.argv[1:2] == ["bulk"]:
    from bench.bench_bulk import main as bulk_main

    sys.exit(bulk_main(sys.argv[2:]))

from bench.bench import main

sys.exit(main(sys.argv[1:]))
