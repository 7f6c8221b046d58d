"""Continual-learning (EWC) speed, genlab vs the plain reference loop: see genlab.benchmarks.continual.

    python benchmarks/bench_continual.py --steps 100 [--json]     (same as `genlab bench continual`)
"""

from genlab.benchmarks.continual import main

if __name__ == "__main__":
    main()
