"""SPEC §6 grid speed, stacked grid vs the runs one after another: see genlab.benchmarks.optimizers.

    python benchmarks/bench_optimizers.py --steps 60 [--dataloader] [--json]   (same as `genlab bench optimizers`)
"""

from genlab.benchmarks.optimizers import main

if __name__ == "__main__":
    main()
