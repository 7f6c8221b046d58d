"""Summariser generation speed, cached vs uncached decoding: see genlab.benchmarks.summarize.

    python benchmarks/bench_summarize.py --new-tokens 64 [--json]     (same as `genlab bench summarize`)
"""

from genlab.benchmarks.summarize import main

if __name__ == "__main__":
    main()
