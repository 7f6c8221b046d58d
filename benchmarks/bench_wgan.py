"""WGAN training speed, genlab vs the plain reference loop: see genlab.benchmarks.wgan.

    python benchmarks/bench_wgan.py --iterations 500 [--json]     (same as `genlab bench wgan`)
"""

from genlab.benchmarks.wgan import main

if __name__ == "__main__":
    main()
