"""VAE training speed, genlab vs the plain reference loop: see genlab.benchmarks.vae.

    python benchmarks/bench_vae.py --steps 300 --seeds 3 [--json]     (same as `genlab bench vae`)
"""

from genlab.benchmarks.vae import main

if __name__ == "__main__":
    main()
