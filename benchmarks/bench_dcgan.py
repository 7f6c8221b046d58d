"""DCGAN training speed, genlab vs the plain reference loop: see genlab.benchmarks.dcgan.

    python benchmarks/bench_dcgan.py --steps 40 [--json]     (same as `genlab bench dcgan`)
"""

from genlab.benchmarks.dcgan import main

if __name__ == "__main__":
    main()
