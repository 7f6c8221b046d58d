"""``genlab reproduce``: rerun the course, then write one report (SPEC §13).

    genlab reproduce all --profile quick --out runs/course            # one run after another, no Ray
    genlab reproduce dcgan vae --profile full --out runs/f --jobs 2     # a local Ray instance, 2 runs at a time
    genlab reproduce all --profile full --out /shared/c --address auto  # an existing Ray cluster

Every run is ``python -m genlab run EXPERIMENT <profile args> --out DIR/EXPERIMENT`` in a
subprocess, its output in ``DIR/logs/EXPERIMENT.log``. ``DIR/reproduce.json`` keeps the profile and
each run's status, so the command is resumable: a run whose directory holds a valid record
(:meth:`genlab.record.Record.read`) is skipped, one with a checkpoint but no record is continued
with ``--resume``, and a failed run is reported (status, exit code, its last error line) without
stopping the others. At the end ``DIR/report.html`` and ``DIR/report.md`` are written by
:mod:`genlab.report`.

Execution:

- ``--jobs 1`` without ``--address`` (the default) runs the subprocesses one after another in
  this process; Ray is not imported. Two or more runs on the CPU start from one interpreter that
  has already imported torch and the planned experiments (:mod:`multiprocessing`'s forkserver):
  each is a fork of it, a process of its own with its own environment, log and exit status, that
  does not pay the seconds of imports again (most of a smoke run); its outputs are those of a
  fresh interpreter. A run that may use CUDA starts a fresh interpreter, since CUDA does not
  survive a fork.
- ``--jobs N`` (N > 1) starts a local Ray instance and keeps N runs in flight; ``--address
  auto|HOST:PORT`` connects to a running cluster instead. Each run is one Ray task that declares
  ``num_cpus`` = its threads (``--threads``, default cores / jobs) and, on ``--device cuda``,
  ``num_gpus`` = a fraction of one GPU (``--gpu-fraction``, default 1 / jobs) so that several
  small runs share a device.
- Without Ray installed, ``--jobs N > 1`` and ``--address`` are refused with the install command
  (``pip install 'genlab[ray]'``) rather than silently run one at a time: the user asked for a
  cluster, and should learn that they are not getting one.
- Ray's workers write into ``DIR`` directly: on a cluster ``DIR`` must be on a filesystem every
  node mounts at the same path (NFS, Lustre, a Kubernetes ReadWriteMany volume), and genlab must
  be installed on every node.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlab import experiments
from genlab.errors import ConfigError, MissingDependencyError, UnknownNameError
from genlab.profiles import OUT_PLACEHOLDER, PRELOAD, PROFILE_NAMES, profile_args, profile_needs
from genlab.record import Record, RecordError

__all__ = ["RunSpec", "RunResult", "plan", "run_one", "reproduce", "STATE_FILE", "RAY_INSTALL"]

STATE_FILE = "reproduce.json"
RAY_INSTALL = "pip install 'genlab[ray]'  (or: pip install 'ray[default]>=2.9')"


@dataclass
class RunSpec:
    """One run of a reproduction.

    Attributes:
        experiment: registry name.
        args: the profile's ``genlab run`` arguments (without ``--out``, ``--device``, ``--resume``).
        run_dir: absolute run directory (``DIR/EXPERIMENT``).
        log: absolute path of the run's combined stdout/stderr log.
        device: ``auto``, ``cpu`` or ``cuda``, passed as ``--device``.
        threads: intra-op CPU threads of the run (``OMP_NUM_THREADS``); the Ray task's ``num_cpus``.
        gpu_fraction: share of one GPU the Ray task declares (0 on CPU).
        needs: experiments of the same reproduction whose runs must be done before this one starts.
        preload: start the run as a fork of the preloaded interpreter (:func:`_run_forked`) rather
            than as a fresh ``python -m genlab``; only for runs on the CPU.
    """

    experiment: str
    args: list[str]
    run_dir: Path
    log: Path
    device: str = "auto"
    threads: int = 1
    gpu_fraction: float = 0.0
    needs: list[str] = field(default_factory=list)
    preload: bool = False

    def command(self, resume: bool) -> list[str]:
        """The ``python -m genlab run`` command line of this run."""
        cmd = [sys.executable, "-m", "genlab", "run", self.experiment, *self.args, "--out", str(self.run_dir),
               "--device", self.device]
        return cmd + (["--resume"] if resume else [])


@dataclass
class RunResult:
    """What became of a run.

    Attributes:
        experiment: registry name.
        status: ``done`` (ran, valid record), ``skipped`` (a valid record was already there),
            ``failed`` (non-zero exit), ``no record`` (exited 0 but left no valid record).
        seconds: wall seconds of the subprocess (of the earlier run for ``skipped``), or None.
        returncode: the subprocess's exit status, or None when it was not started.
        message: for ``failed`` / ``no record``, the error line that says why; else "".
        resumed: whether the run was continued from a checkpoint with ``--resume``.
        command: the command line that ran (empty when skipped).
        host: the machine that ran it.
        ray_task: the Ray task id when it ran as a Ray task, else "".
        resources: what Ray assigned to the task (``{"CPU": 2.0, "GPU": 0.25}``), else {}.
    """

    experiment: str
    status: str
    seconds: float | None = None
    returncode: int | None = None
    message: str = ""
    resumed: bool = False
    command: list[str] = field(default_factory=list)
    host: str = ""
    ray_task: str = ""
    resources: dict[str, float] = field(default_factory=dict)


def _ray_context() -> tuple[str, dict[str, float]]:
    """(task id, assigned resources) inside a Ray task; ("", {}) elsewhere (Ray is not imported for it)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return "", {}
    ctx = ray.get_runtime_context()
    task = ctx.get_task_id() or ""
    return task, ({k: float(v) for k, v in ctx.get_assigned_resources().items()} if task else {})


def _valid_record(run_dir: Path) -> bool:
    try:
        Record.read(run_dir)
        return True
    except (RecordError, FileNotFoundError):
        return False


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BOX = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛]")


def _error_line(log: Path, limit: int = 400) -> str:
    """The line of a run's log that says why it failed: the last ``error:`` line or exception, else the
    last line that is not a pointer to ``--help`` (tyro's boxes and ANSI colours stripped)."""
    try:
        text = log.read_text(errors="replace")[-20000:]
    except OSError:
        return "no log"
    lines = [_BOX.sub("", _ANSI.sub("", line)).strip() for line in text.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith(("For full helptext", "$ "))]
    for line in reversed(lines):
        if (line.lower().startswith("error") or re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line)
                or line.startswith("Unrecognized options:")):
            return line[:limit]
    return lines[-1][:limit] if lines else "no output"


# The preloaded interpreter: torch, torch._dynamo (every torch.optim optimiser imports it when built:
# seconds), genlab's command line, then each planned experiment's module and its preload.
_PRELOAD = ("torch", "torch._dynamo", "genlab.cli")


def _start_forkserver(experiment_modules: list[str]) -> None:
    """Set what the forkserver imports once (:data:`_PRELOAD`, then ``experiment_modules``: the planned
    experiments' modules and what :data:`genlab.profiles.PRELOAD` lists for them) before it starts,
    at the first forked run.

    The server is one per process: a later reproduction in the same process reuses it, and the
    modules it did not preload are imported by each run itself (the preload saves time; it
    changes no result). The server never touches CUDA, and runs that may use it are not forked
    (:func:`reproduce`).
    """
    multiprocessing.get_context("forkserver").set_forkserver_preload([*_PRELOAD, *experiment_modules])


def _forked_main(argv: list[str], env: dict[str, str], log: str, threads: int) -> None:
    """``python -m genlab ARGV`` in a fork of the preloaded interpreter (:mod:`runpy`, as ``-m`` runs
    it): the run's environment, stdin from /dev/null, stdout and stderr to ``log``, ``threads``
    intra-op threads; the exit status is the command's (130 after Ctrl-C)."""
    import runpy

    import torch

    os.environ.clear()
    os.environ.update(env)
    null, out = os.open(os.devnull, os.O_RDONLY), os.open(log, os.O_WRONLY | os.O_APPEND)
    for fd, target in ((null, 0), (out, 1), (out, 2)):
        os.dup2(fd, target)
    os.close(null)
    os.close(out)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    torch.set_num_threads(threads)  # the server imported torch before OMP_NUM_THREADS of this run was set
    sys.argv = [sys.executable, *argv]
    try:
        runpy.run_module("genlab", run_name="__main__", alter_sys=True)  # raises SystemExit(status)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _run_forked(spec: RunSpec, argv: list[str], env: dict[str, str]) -> int:
    """Run ``genlab ARGV`` as a fork of the preloaded interpreter; its exit status (negative: the
    signal that ended it, as :class:`subprocess.Popen` gives)."""
    proc = multiprocessing.get_context("forkserver").Process(
        target=_forked_main, args=(argv, env, str(spec.log), spec.threads), name=f"genlab-{spec.experiment}")
    proc.start()
    proc.join()
    return proc.exitcode


def run_one(spec: RunSpec) -> RunResult:
    """Run (or resume) one experiment in a subprocess and say what became of it.

    A checkpoint in ``spec.run_dir`` (``checkpoints/last.pt``) without a valid record means an
    interrupted run: it is continued with ``--resume``. Output goes to ``spec.log`` (appended).
    Never raises for a failing run: the failure is the returned :class:`RunResult`.
    """
    spec.run_dir.parent.mkdir(parents=True, exist_ok=True)
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    resume = (spec.run_dir / "checkpoints" / "last.pt").exists()
    cmd = spec.command(resume)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(spec.threads),
           "MKL_NUM_THREADS": str(spec.threads)}
    start = time.perf_counter()
    with spec.log.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            if spec.preload:
                returncode = _run_forked(spec, cmd[3:], env)  # cmd without `python -m genlab`
            else:
                returncode = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env).returncode
        except OSError as err:
            log.write(f"error: could not start {cmd[0]}: {err}\n")
            returncode = 127
    seconds = time.perf_counter() - start
    task, resources = _ray_context()
    result = RunResult(spec.experiment, "done", seconds, returncode, resumed=resume, command=cmd,
                       host=socket.gethostname(), ray_task=task, resources=resources)
    if returncode != 0:
        result.status = "failed"
        result.message = f"exit {returncode}: {_error_line(spec.log)}"
        return result
    try:
        Record.read(spec.run_dir)
    except (RecordError, FileNotFoundError) as err:
        result.status = "no record"
        result.message = str(err)
    return result


def plan(names: list[str], profile: str, out: Path, device: str = "auto", threads: int = 1,
         gpu_fraction: float = 0.0) -> list[RunSpec]:
    """The runs of ``names`` (``["all"]`` = every registered experiment) under ``profile``.

    Raises:
        KeyError: an unknown experiment or profile (the message names the known ones).
    """
    if names == ["all"] or not names:
        names = list(experiments.REGISTRY)
    elif "all" in names:
        raise UnknownNameError("`all` cannot be combined with experiment names; give either `all` or names")
    for name in names:
        experiments.get(name)  # KeyError naming the registered ones
    if len(set(names)) != len(names):
        raise UnknownNameError(f"experiment names repeat: {' '.join(names)}")
    out = out.resolve()
    for name in names:
        for need in profile_needs(name, profile):
            if need not in names and not _valid_record(out / need):
                raise ConfigError(f"{name}'s {profile} profile reads the run of {need} ({out / need}), which is "
                                  f"neither asked for nor done there: add {need} to the experiments, or reproduce "
                                  f"it into {out} first")
    def depth(name: str) -> int:  # 0 for a run that reads no other run's output
        return max((1 + depth(need) for need in profile_needs(name, profile) if need in names), default=0)

    # a run comes after every run whose output it reads; otherwise the order given
    ordered = sorted(names, key=lambda n: (depth(n), names.index(n)))
    return [RunSpec(name, [a.replace(OUT_PLACEHOLDER, str(out)) for a in profile_args(name, profile)], out / name,
                    out / "logs" / f"{name}.log", device, threads, gpu_fraction, profile_needs(name, profile))
            for name in ordered]


class _State:
    """``DIR/reproduce.json``: the profile and each run's latest :class:`RunResult`, written atomically."""

    def __init__(self, out: Path, profile: str):
        self.path = out / STATE_FILE
        self.data: dict[str, Any] = {"profile": profile, "runs": {}}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise ConfigError(f"{self.path}: not valid JSON ({err}); delete it to start the reproduction over")
            if saved.get("profile") != profile:
                raise ConfigError(f"{out} holds a {saved.get('profile')!r} reproduction, not {profile!r}; "
                                 f"choose another --out or pass --profile {saved.get('profile')}")
            self.data = saved
        self._lock = threading.Lock()

    def set_planned(self, names: list[str]) -> None:
        """Record the runs of this invocation (the report lists those not run as such)."""
        planned = list(self.data.get("planned", []))
        planned += [n for n in names if n not in planned]
        self.data["planned"] = planned
        self._write()

    def previous(self, name: str) -> dict[str, Any] | None:
        return self.data["runs"].get(name)

    def update(self, result: RunResult, spec: RunSpec) -> None:
        with self._lock:
            entry = dataclasses.asdict(result)
            entry["args"] = spec.args
            entry["run_dir"] = spec.run_dir.name
            entry["log"] = str(spec.log.relative_to(self.path.parent))
            self.data["runs"][result.experiment] = entry
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".reproduce.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=2)
        os.replace(tmp, self.path)


class _Progress:
    """Done / running / waiting with times: a live table on a terminal, one line per change otherwise."""

    def __init__(self, specs: list[RunSpec], stream=None, live: bool | None = None):
        self.names = [s.experiment for s in specs]
        self.state = {n: "waiting" for n in self.names}
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float | None] = {}
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._live = None
        if live is None:
            live = self.stream.isatty()
        if live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=2,
                              get_renderable=self._table)
            self._live.start()

    def _table(self):
        from rich.table import Table

        now = time.perf_counter()
        counts = {s: sum(v == s for v in self.state.values()) for s in ("done", "running", "waiting")}
        done = len(self.names) - counts["running"] - counts["waiting"]
        table = Table(title=f"genlab reproduce: {done}/{len(self.names)} finished, {counts['running']} running, "
                            f"{counts['waiting']} waiting, {now - self.t0:.0f} s")
        for col in ("experiment", "state", "time"):
            table.add_column(col)
        style = {"done": "green", "skipped": "green", "failed": "red", "no record": "yellow", "running": "cyan"}
        for n in self.names:
            s = self.state[n]
            t = now - self.started[n] if s == "running" else self.seconds.get(n)
            table.add_row(n, f"[{style.get(s, 'dim')}]{s}[/]", "" if t is None else f"{t:.1f} s")
        return table

    def set(self, name: str, state: str, seconds: float | None = None, message: str = "") -> None:
        self.state[name] = state
        if state == "running":
            self.started[name] = time.perf_counter()
        else:
            self.seconds[name] = seconds
        if self._live is None:
            finished = sum(v not in ("waiting", "running") for v in self.state.values())
            when = f" {seconds:.1f} s" if seconds is not None else ""
            why = f" ({message})" if message else ""
            print(f"[{finished}/{len(self.names)}] {state:9s} {name}{when}{why}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def _ray_module():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--jobs > 1 and --address run on Ray, which is not installed; install it with "
                           f"{RAY_INSTALL}, or use --jobs 1") from None
    return ray


def _runs_on_cpu(device: str) -> bool:
    """Whether runs on ``device`` (``auto``, ``cpu``, ``cuda``) stay on the CPU: ``cpu``, or ``auto`` on
    a machine where torch sees no CUDA device."""
    if device != "auto":
        return device == "cpu"
    import torch

    return not torch.cuda.is_available()


def _execute_local(specs: list[RunSpec], on_start: Callable, on_done: Callable,
                   blocked_by: Callable[[RunSpec], RunResult | None]) -> None:
    """One run after another, in subprocesses of this process (no Ray)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        for spec in specs:
            if (blocked := blocked_by(spec)) is not None:
                on_done(spec, blocked)
                continue
            on_start(spec)
            future = pool.submit(run_one, spec)
            while True:  # wait in slices so that Ctrl-C reaches the main thread
                try:
                    result = future.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
            on_done(spec, result)


def _execute_ray(specs: list[RunSpec], jobs: int, address: str | None, on_start: Callable,
                 on_done: Callable, blocked_by: Callable[[RunSpec], RunResult | None],
                 finished: Callable[[str], bool]) -> None:
    """Each run one Ray task declaring ``num_cpus`` = threads and ``num_gpus`` = its GPU fraction;
    at most ``jobs`` in flight. ``address`` None starts a local instance with ``jobs x threads`` CPUs."""
    ray = _ray_module()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    if address is None:
        threads = max(s.threads for s in specs)
        ray.init(num_cpus=jobs * threads, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(run_one)
        pending = list(specs)
        in_flight: dict[Any, RunSpec] = {}
        while pending or in_flight:
            for spec in list(pending):
                if (blocked := blocked_by(spec)) is not None:  # a run it needs has failed
                    pending.remove(spec)
                    on_done(spec, blocked)
            startable = [s for s in pending if all(map(finished, s.needs))]
            if not startable and not in_flight:
                break  # unreachable: plan() orders every run after the runs it needs
            for spec in startable[:jobs - len(in_flight)]:
                pending.remove(spec)
                task = remote.options(num_cpus=spec.threads, num_gpus=spec.gpu_fraction, max_retries=0,
                                      name=f"genlab-{spec.experiment}").remote(spec)
                in_flight[task] = spec
                on_start(spec)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for task in ready:
                spec = in_flight.pop(task)
                try:
                    result = ray.get(task)
                except Exception as err:  # a lost node or worker: the run failed, the others go on
                    result = RunResult(spec.experiment, "failed", message=f"Ray task failed: {type(err).__name__}: "
                                                                          f"{str(err).splitlines()[0] if str(err) else ''}")
                on_done(spec, result)
    finally:
        ray.shutdown()


def reproduce(names: list[str], profile: str, out: str | Path, jobs: int = 1, address: str | None = None,
              device: str = "auto", threads: int | None = None, gpu_fraction: float | None = None,
              readings: Path | None = None, live: bool | None = None, stream=None) -> list[RunResult]:
    """Run the ``profile`` of every experiment in ``names`` into ``out`` and write the report.

    Args:
        names: registry names, or ``["all"]``.
        profile: ``smoke``, ``quick`` or ``full`` (:data:`genlab.profiles.PROFILES`).
        out: the reproduction folder (runs in ``out/EXPERIMENT``, logs in ``out/logs``).
        jobs: runs in flight at once; 1 without ``address`` runs without Ray.
        address: a Ray cluster (``auto`` or ``HOST:PORT``), or None.
        device: ``auto``, ``cpu`` or ``cuda``, for every run.
        threads: CPU threads per run (default: cores // jobs, at least 1).
        gpu_fraction: GPU share per Ray task on ``cuda`` (default 1 / jobs); ignored otherwise.
        readings: folder of ``<experiment>.md`` readings for the report (default ``docs/readings``).
        live: a live progress table (default: when the stream is a terminal).

    Returns:
        One :class:`RunResult` per run, in ``names`` order.

    Raises:
        KeyError: unknown experiment or profile. ValueError: bad numbers, or ``out`` holds another
        profile's reproduction. RuntimeError: Ray asked for but not installed (names the install command).
    """
    if profile not in PROFILE_NAMES:
        raise UnknownNameError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if gpu_fraction is not None and not 0 < gpu_fraction <= 1:
        raise ConfigError(f"--gpu-fraction must be in (0, 1], got {gpu_fraction}")
    use_ray = jobs > 1 or address is not None
    if use_ray:
        _ray_module()  # refuse before anything is written
    out = Path(out).resolve()
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    gpu = (gpu_fraction or 1.0 / jobs) if device == "cuda" else 0.0
    specs = plan(names, profile, out, device, threads, gpu)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out, profile)
    state.set_planned([s.experiment for s in specs])
    results: dict[str, RunResult] = {}
    todo = []
    for spec in specs:
        if _valid_record(spec.run_dir):
            prev = state.previous(spec.experiment) or {}
            results[spec.experiment] = RunResult(spec.experiment, "skipped", prev.get("seconds"),
                                                 prev.get("returncode"), host=prev.get("host", ""))
        else:
            todo.append(spec)

    progress = _Progress(specs, stream=stream, live=live)
    for name, r in results.items():
        progress.set(name, "skipped", r.seconds)

    def on_start(spec: RunSpec) -> None:
        progress.set(spec.experiment, "running")

    def on_done(spec: RunSpec, result: RunResult) -> None:
        results[spec.experiment] = result
        state.update(result, spec)
        progress.set(spec.experiment, result.status, result.seconds, result.message)

    def finished(name: str) -> bool:
        """Whether ``name``'s run holds its record (done now, skipped, or done by an earlier reproduction)."""
        return results[name].status in ("done", "skipped") if name in results else _valid_record(out / name)

    def blocked_by(spec: RunSpec) -> RunResult | None:
        """A ``failed`` result when a run that ``spec`` needs has ended without a record, else None."""
        failed = [n for n in spec.needs if n in results and results[n].status not in ("done", "skipped")]
        return RunResult(spec.experiment, "failed", message=f"not run: it needs the run of {', '.join(failed)}, "
                                                            "which failed") if failed else None

    interrupted = False
    try:
        if use_ray and todo:  # nothing left to run: no Ray to start
            _execute_ray(todo, jobs, address, on_start, on_done, blocked_by, finished)
        elif todo:
            # the preload pays from the second run; no forkserver on Windows
            if len(todo) > 1 and "forkserver" in multiprocessing.get_all_start_methods() and _runs_on_cpu(device):
                for spec in todo:
                    spec.preload = True
                _start_forkserver([module for spec in todo for module in (
                    experiments.REGISTRY[spec.experiment], *PRELOAD.get(spec.experiment, ()))])
            _execute_local(todo, on_start, on_done, blocked_by)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        from genlab import report

        report.write_report([out], out / "report.html", out / "report.md",
                            readings=report.DEFAULT_READINGS if readings is None else readings)
    if interrupted:
        raise KeyboardInterrupt
    return [results[s.experiment] for s in specs if s.experiment in results]
