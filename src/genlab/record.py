"""One record per run: the schema of every experiment's ``metrics.json``, and its renderer.

A run's record says what was measured and how it compares with the specification
(``../shared/SPEC.md``): headline metrics with their standard errors and units, the SPEC
reference beside each, a verdict with the tolerance it used, tables, figures with captions,
seconds spent, the config and the environment. ``summary.md`` is rendered from it by
:func:`render_markdown`; ``genlab report`` reads the same record from many runs.

    record = Record(experiment="vae", title="VAE on MNIST", spec_section="§4", metrics=[
        Metric("negative_elbo", 102.01, "nats", stderr=0.31, n_seeds=3, lower_is_better=True,
               reference=Reference(98.12, stderr=0.77, section="§4"))])
    record.write(run_path)            # metrics.json (validated) and summary.md
    Record.read(run_path)             # back, validated

The verdict (:func:`verdict`) is one of ``meets``, ``beats``, ``misses`` or ``no reference``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genlab.errors import GenlabError

__all__ = ["SCHEMA", "Reference", "Metric", "Table", "Figure", "Record", "RecordError", "verdict",
           "default_tolerance", "render_markdown", "mean_std", "mean_and_stderr", "run_figures", "seed_metric"]

SCHEMA = "genlab.record/1"
VERDICTS = ("meets", "beats", "misses", "no reference")


class RecordError(GenlabError, ValueError):
    """A metrics.json that does not follow :data:`SCHEMA`; the message names the file and the field."""


@dataclass
class Reference:
    """A reference number of the specification.

    Attributes:
        value: the reference value, in the metric's unit.
        stderr: its standard error where the reference gives one (same unit), else None.
        section: the SPEC section it comes from, e.g. ``"§4"``.
        note: what the reference was measured on, e.g. "a correct PyTorch solution, seed 42".
    """

    value: float
    stderr: float | None = None
    section: str = ""
    note: str = ""


@dataclass
class Metric:
    """One measured number.

    Attributes:
        name: a short identifier in the field's terms (``fid``, ``negative_elbo``, ``rouge1``).
        value: the measurement (the mean over seeds where there are several).
        unit: ``nats``, ``%``, ``images/s``, ... (``""`` for a pure number).
        stderr: standard error of the mean over ``n_seeds`` seeds, or None.
        n_seeds: how many seeds ``value`` averages, or None.
        lower_is_better: direction for the verdict (``beats`` is only possible with a direction);
            None where neither direction is better (a loss that should match a reference).
        reference: the SPEC number to compare with, or None.
        tolerance: absolute tolerance for ``meets`` (same unit); None -> :func:`default_tolerance`.
        headline: shown in the report's overview table (one or two per experiment).
        description: one line of what it is (shown in the report).
        verdict, tolerance_used: filled in by :func:`verdict` when the record is written.
    """

    name: str
    value: float
    unit: str = ""
    stderr: float | None = None
    n_seeds: int | None = None
    lower_is_better: bool | None = None
    reference: Reference | None = None
    tolerance: float | None = None
    headline: bool = False
    description: str = ""
    verdict: str = "no reference"
    tolerance_used: float | None = None


@dataclass
class Table:
    """A table of numbers: ``columns`` names, ``rows`` of cells (numbers or strings)."""

    name: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    """A figure file of the run, ``path`` relative to the run directory, with its caption."""

    path: str
    caption: str = ""


@dataclass
class Record:
    """Everything a run reports; ``metrics.json`` is this dataclass as JSON.

    Attributes:
        experiment: the registry name (``dcgan``).
        title: one line, e.g. "DCGAN on FashionMNIST".
        spec_section: e.g. ``"§1"``.
        metrics: headline and other metrics (:class:`Metric`).
        tables: metric tables (:class:`Table`).
        figures: figures with captions (:class:`Figure`).
        train_seconds, eval_seconds: wall seconds spent training and evaluating (None if not measured).
        config: the run's resolved config (JSON primitives).
        environment: versions, device, CPU ISA, seed, commit (``env.json``).
        notes: lines of free text shown under the tables (what was skipped, what was changed).
        extra: experiment-specific data kept for tools (not rendered).
    """

    experiment: str
    title: str
    spec_section: str = ""
    metrics: list[Metric] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    train_seconds: float | None = None
    eval_seconds: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    def metric(self, name: str) -> Metric:
        """The metric called ``name``; KeyError naming the ones there are."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no metric {name!r} in the {self.experiment} record; it has "
                       f"{', '.join(m.name for m in self.metrics) or 'none'}")

    def headline(self) -> list[Metric]:
        """The headline metrics (all metrics flagged ``headline``; the first metric if none is)."""
        flagged = [m for m in self.metrics if m.headline]
        return flagged or self.metrics[:1]

    def to_dict(self) -> dict[str, Any]:
        for m in self.metrics:
            m.verdict, m.tolerance_used = verdict(m)
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metrics.json") -> Record:
        """Build and validate; RecordError names ``source`` and the offending field."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise RecordError(f"{source}: not a {SCHEMA} record (schema: {found!r}); rerun "
                              f"`genlab eval RUN_DIR` to rewrite it")
        try:
            metrics = []
            for m in data.get("metrics", []):
                m = dict(m)
                if m.get("reference") is not None:
                    m["reference"] = Reference(**m["reference"])
                metrics.append(Metric(**m))
            record = cls(**{**data, "metrics": metrics,
                            "tables": [Table(**t) for t in data.get("tables", [])],
                            "figures": [Figure(**f) for f in data.get("figures", [])]})
        except TypeError as err:
            raise RecordError(f"{source}: {err}") from None
        record.validate(source)
        return record

    def validate(self, source: str = "record") -> None:
        """Check types and values; raises RecordError naming ``source`` and the field."""
        def fail(what: str) -> None:
            raise RecordError(f"{source}: {what}")

        if not self.experiment or not isinstance(self.experiment, str):
            fail("experiment must be a non-empty string")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            fail(f"metric names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        for m in self.metrics:
            if not isinstance(m.value, (int, float)) or isinstance(m.value, bool):
                fail(f"metric {m.name}: value must be a number, got {m.value!r}")
            if m.stderr is not None and not (m.stderr >= 0):
                fail(f"metric {m.name}: stderr must be >= 0, got {m.stderr}")
            if m.n_seeds is not None and m.n_seeds < 1:
                fail(f"metric {m.name}: n_seeds must be >= 1, got {m.n_seeds}")
            if m.verdict not in VERDICTS:
                fail(f"metric {m.name}: verdict must be one of {VERDICTS}, got {m.verdict!r}")
        for t in self.tables:
            if any(len(r) != len(t.columns) for r in t.rows):
                fail(f"table {t.name}: every row must have {len(t.columns)} cells")
        for s in ("train_seconds", "eval_seconds"):
            v = getattr(self, s)
            if v is not None and not v >= 0:
                fail(f"{s} must be >= 0 or null, got {v}")

    def write(self, run_path: str | Path) -> Path:
        """Validate, then write ``metrics.json`` and ``summary.md`` into ``run_path``; returns metrics.json."""
        run_path = Path(run_path)
        data = self.to_dict()
        self.validate(str(run_path / "metrics.json"))
        path = run_path / "metrics.json"
        path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
        (run_path / "summary.md").write_text(render_markdown(self))
        return path

    @classmethod
    def read(cls, run_path: str | Path) -> Record:
        """The validated record of a run directory; RecordError or FileNotFoundError naming the file."""
        path = Path(run_path) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no record; the run has not finished (resume it with --resume) "
                                    f"or was made by an older genlab (rewrite it with `genlab eval {run_path}`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, str(path))


def _jsonable(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); Paths become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def default_tolerance(metric: Metric) -> float:
    """The tolerance used when a metric states none: two standard errors of the difference,
    ``2 sqrt(se_measured^2 + se_reference^2)``, and at least 5 % of the reference's magnitude
    (a reference given without an error is read as good to about 5 %)."""
    ref = metric.reference
    assert ref is not None
    se = math.sqrt((metric.stderr or 0.0) ** 2 + (ref.stderr or 0.0) ** 2)
    return max(2.0 * se, 0.05 * abs(ref.value))


def verdict(metric: Metric) -> tuple[str, float | None]:
    """(verdict, tolerance used) of a metric against its reference.

    ``meets`` when |value - reference| <= tolerance; outside it, ``beats`` when the value is on
    the better side (``lower_is_better``), ``misses`` otherwise (also when the metric has no
    direction); ``no reference`` without a reference or with a non-finite value.
    """
    ref = metric.reference
    if ref is None or not math.isfinite(metric.value):
        return "no reference", None
    tol = metric.tolerance if metric.tolerance is not None else default_tolerance(metric)
    diff = metric.value - ref.value
    if abs(diff) <= tol:
        return "meets", tol
    if metric.lower_is_better is not None and (diff < 0) == metric.lower_is_better:
        return "beats", tol
    return "misses", tol


def format_value(value: float | None, stderr: float | None = None, unit: str = "") -> str:
    """``102.01 ± 0.31 nats``: 4 significant digits, the error to the same decimals."""
    if value is None:
        return "–"
    if isinstance(value, int) and stderr is None:
        text = f"{value:,}"
    else:
        mag = abs(value)
        decimals = 0 if mag >= 1000 else 1 if mag >= 100 else 2 if mag >= 10 else 3 if mag >= 0.1 else 5
        text = f"{value:.{decimals}f}"
        if stderr is not None:
            text += f" ± {stderr:.{max(decimals, 2)}f}"
    return f"{text} {unit}".strip() if unit and unit != "%" else (text + unit if unit else text)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return format_value(value)
    return "–" if value is None else str(value)


def render_markdown(record: Record) -> str:
    """summary.md of a record: title, metrics against the references with verdicts, tables,
    figures, time and environment."""
    lines = [f"# {record.title}" + (f" (SPEC {record.spec_section})" if record.spec_section else ""), ""]
    env = record.environment
    bits = [f"`{record.experiment}`"]
    if "seed" in record.config:
        bits.append(f"seed {record.config['seed']}")
    if env.get("device"):
        bits.append(f"device {env['device']}")
    if record.train_seconds is not None:
        bits.append(f"training {record.train_seconds:.1f} s")
    if record.eval_seconds is not None:
        bits.append(f"evaluation {record.eval_seconds:.1f} s")
    lines += [", ".join(bits), ""]
    if record.metrics:
        lines += ["| metric | measured | reference | verdict |", "|---|---|---|---|"]
        for m in record.metrics:
            v, tol = verdict(m)
            measured = format_value(m.value, m.stderr, m.unit)
            if m.n_seeds:
                measured += f" ({m.n_seeds} seed{'s' if m.n_seeds > 1 else ''})"
            ref = m.reference
            ref_text = (format_value(ref.value, ref.stderr, m.unit) + (f" ({ref.section})" if ref.section else "")
                        if ref else "–")
            v_text = v + (f" (±{format_value(tol)})" if tol is not None else "")
            name = f"**{m.name}**" if m in record.headline() else m.name
            lines.append(f"| {name} | {measured} | {ref_text} | {v_text} |")
        lines.append("")
    for t in record.tables:
        lines += [f"### {t.name}", ""]
        if t.caption:
            lines += [t.caption, ""]
        lines += ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
        lines.append("")
    if record.notes:
        lines += [*(f"- {n}" for n in record.notes), ""]
    if record.figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.caption or f.path}]({f.path})" + (f"  \n{f.caption}" if f.caption else "") + "\n"
                  for f in record.figures]
    return "\n".join(lines).rstrip() + "\n"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of per-seed values, for a metric's value and
    its spread: (mean, 0.0) for one value, (None, None) for none (e.g. every seed diverged)."""
    if not len(values):
        return None, None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_figures(run_path: str | Path, captions: dict[str, str]) -> list[Figure]:
    """Every ``figures/*.png`` of the run directory ``run_path``, sorted by name, each captioned by
    the first entry of ``captions`` (file-name prefix -> caption) whose prefix its name starts
    with ("" if none)."""
    out = []
    for png in sorted((Path(run_path) / "figures").glob("*.png")):
        caption = next((text for prefix, text in captions.items() if png.name.startswith(prefix)), "")
        out.append(Figure(f"figures/{png.name}", caption))
    return out


def mean_and_stderr(values: Any) -> tuple[float, float]:
    """The mean over seeds of per-seed ``values`` and its standard error std(ddof=1) / sqrt(n)
    (0.0 for a single value), as Python floats for :class:`Metric` ``value`` and ``stderr``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not len(values):
        raise ValueError("no values to average")
    mean, std = mean_std(values)
    return mean, std / math.sqrt(len(values))


def seed_metric(name: str, mean: float, std: float, n_seeds: int, unit: str = "", **fields: Any) -> Metric:
    """A :class:`Metric` whose ``value`` is a mean over ``n_seeds`` seeds: its ``stderr`` is the standard
    error of that mean, ``std / sqrt(n_seeds)`` from the seeds' sample standard deviation ``std`` (ddof=1),
    and None for one seed. ``fields``: the other :class:`Metric` fields (``lower_is_better``, ...)."""
    return Metric(name, mean, unit, stderr=std / math.sqrt(n_seeds) if n_seeds > 1 else None, n_seeds=n_seeds,
                  **fields)
