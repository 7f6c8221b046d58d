"""Speed benchmarks: genlab's trainers against plain reference loops, timed in one run."""
