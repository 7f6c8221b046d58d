"""``genlab``: one command line over the registry of experiments.

    genlab list
    genlab run EXPERIMENT [--option value ...]     options: genlab run EXPERIMENT --help
    genlab eval RUN_DIR
    genlab sample RUN_DIR --n N --out FILE.npy
    genlab bench EXPERIMENT [--steps N] [--json]
    genlab reproduce [EXPERIMENT ...|all] --profile {smoke,quick,full} --out DIR [--jobs N] [--address A]
    genlab report RUN_DIR ... --out FILE.html [--md FILE.md]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from genlab import experiments
from genlab.errors import GenlabError


def _experiment_of(run_dir: Path) -> experiments.Experiment:
    config = run_dir / "config.json"
    if not config.exists():
        raise GenlabError(f"{run_dir} is not a genlab run directory (no config.json)")
    return experiments.get(json.loads(config.read_text())["experiment"])


def _benchmark(name: str):
    """``genlab.benchmarks.<name>`` (``-`` read as ``_``), the module whose ``main(argv)`` times
    experiment ``name``; GenlabError if the experiment has none."""
    experiments.get(name)  # an unknown name is refused naming the known ones
    module = f"genlab.benchmarks.{name.replace('-', '_')}"
    if importlib.util.find_spec(module) is None:
        raise GenlabError(f"{name} has no benchmark (no {module})")
    return importlib.import_module(module)


def _data_parallel_names() -> list[str]:
    return [name for name in sorted(experiments.REGISTRY) if experiments.get(name).data_parallel]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="genlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the registered experiments")
    p_run = sub.add_parser("run", help="train an experiment", add_help=False)
    p_run.add_argument("experiment")
    p_eval = sub.add_parser("eval", help="evaluate a finished run (FID, KID, IS, ...)")
    p_eval.add_argument("run_dir", type=Path)
    p_sample = sub.add_parser("sample", help="draw images from a run's generator into a .npy file")
    p_sample.add_argument("run_dir", type=Path)
    p_sample.add_argument("--n", type=int, required=True, help="number of images")
    p_sample.add_argument("--out", type=Path, required=True, help="output .npy: uint8 (N, 28, 28)")
    p_sample.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
    p_bench = sub.add_parser("bench", help="time genlab against a plain reference loop", add_help=False)
    p_bench.add_argument("experiment")
    p_repro = sub.add_parser("reproduce", help="rerun experiments under a profile, then write one report (SPEC §13)")
    p_repro.add_argument("experiments", nargs="*", default=["all"], metavar="EXPERIMENT",
                         help="registered experiments, or `all` (the default)")
    p_repro.add_argument("--profile", choices=["smoke", "quick", "full"], required=True,
                         help="smoke: seconds each; quick: minutes each on 2 cores; full: SPEC size")
    p_repro.add_argument("--out", type=Path, required=True, help="folder of the runs, logs and report")
    p_repro.add_argument("--jobs", type=int, default=1, help="runs at once; > 1 starts a local Ray (default 1, no Ray)")
    p_repro.add_argument("--address", default=None, help="a running Ray cluster: auto or HOST:PORT")
    p_repro.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device of every run")
    p_repro.add_argument("--threads", type=int, default=None, help="CPU threads per run (default cores // jobs)")
    p_repro.add_argument("--gpu-fraction", type=float, default=None,
                         help="share of one GPU per Ray task on --device cuda (default 1 / jobs)")
    p_report = sub.add_parser("report", help="run directories -> one self-contained HTML report and its Markdown")
    p_report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                          help="run directories or `genlab reproduce` folders")
    p_report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p_report.add_argument("--md", type=Path, default=None, help="the Markdown twin (default: --out with .md)")
    p_report.add_argument("--readings", type=Path, default=None, help="folder of <experiment>.md readings "
                          "(default docs/readings of the genlab checkout)")
    args, rest = parser.parse_known_args(argv)

    try:
        if args.command == "list":
            for name in sorted(experiments.REGISTRY):
                print(f"{name:12s} {experiments.get(name).summary}")
            return 0
        if args.command == "run":
            import tyro

            from genlab import distributed

            exp = experiments.get(args.experiment)
            distributed.refuse_unless_supported(exp.name, exp.data_parallel, _data_parallel_names)
            config = tyro.cli(exp.config, args=rest, prog=f"genlab run {exp.name}", description=exp.summary)
            try:
                path = exp.run(config)  # under torchrun every rank runs it; the experiment joins the group
            finally:
                distributed.shutdown()
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"run directory: {path}")
            return 0
        if rest and args.command != "bench":
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        if args.command == "eval":
            exp = _experiment_of(args.run_dir)
            if exp.evaluate is None:
                raise GenlabError(f"{exp.name} has no evaluation")
            print(json.dumps(exp.evaluate(args.run_dir), indent=2))
            return 0
        if args.command == "sample":
            if args.n < 1:
                parser.error("--n must be >= 1")
            exp = _experiment_of(args.run_dir)
            if exp.sample is None:
                raise GenlabError(f"{exp.name} does not generate images")
            images = np.asarray(exp.sample(args.run_dir, args.n, args.seed), dtype=np.uint8)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            np.save(args.out, images)
            print(f"wrote {args.out}: {images.dtype} {images.shape}")
            return 0
        if args.command == "reproduce":
            from genlab import reproduce

            try:
                results = reproduce.reproduce(args.experiments, args.profile, args.out, jobs=args.jobs,
                                              address=args.address, device=args.device, threads=args.threads,
                                              gpu_fraction=args.gpu_fraction)
            except KeyboardInterrupt:
                print(f"interrupted; report of what finished: {args.out / 'report.html'}; rerun the same command "
                      f"to resume", file=sys.stderr)
                return 130
            bad = [r for r in results if r.status in ("failed", "no record")]
            print(f"{len(results) - len(bad)}/{len(results)} runs with a record; report: {args.out / 'report.html'}")
            for r in bad:
                print(f"  {r.status}: {r.experiment}: {r.message}", file=sys.stderr)
            return 1 if bad else 0
        if args.command == "report":
            from genlab import report

            if args.out.suffix.lower() not in (".html", ".htm"):
                parser.error(f"--out {args.out}: the report is HTML; name it FILE.html")
            md = args.md or args.out.with_suffix(".md")
            readings = args.readings or report.DEFAULT_READINGS
            if args.readings is not None and not args.readings.is_dir():
                raise GenlabError(f"--readings {args.readings}: no such folder")
            entries = report.write_report(args.run_dirs, args.out, md, readings=readings)
            print(f"wrote {args.out} and {md}: {len(entries)} runs, "
                  f"{sum(e.record is not None for e in entries)} with a record")
            return 0
        if args.command == "bench":
            _benchmark(args.experiment).main(rest)
            return 0
    except GenlabError as err:  # genlab's own refusals: one line; anything else keeps its traceback
        rank = int(os.environ.get("RANK", "0"))  # under torchrun: which process refused
        print(f"error: {err}" if rank == 0 else f"error (rank {rank}): {err}", file=sys.stderr)
        return err.exit_code
    return 0
