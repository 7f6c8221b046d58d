"""GAN training speed, genlab vs the plain reference loop: see genlab.benchmarks.gan.

    python benchmarks/bench_gan.py --steps 30 [--generator-loss minimax] [--json]   (same as `genlab bench gan`)
"""

from genlab.benchmarks.gan import main

if __name__ == "__main__":
    main()
