"""``genlab report``: run directories -> one self-contained HTML page and its Markdown twin (SPEC §13).

    genlab report runs/course --out report.html              # a `genlab reproduce` folder
    genlab report runs/dcgan__42__* runs/vae_try --out r.html # or run directories

A run is read only through :meth:`genlab.record.Record.read` (its ``metrics.json``); nothing is
retrained. A folder holding ``reproduce.json`` (written by :mod:`genlab.reproduce`) stands for its
runs, in the order they were planned, with the status of those that failed or were never run.

The page starts with an overview table (experiment, headline metric, measured ± s.e., SPEC
reference, verdict, time, device), then one section per run: figures (base64-embedded, so the file
opens offline), the metric and other tables, the written reading from
``docs/readings/<experiment>.md``, the config options that differ from the experiment's defaults,
and the environment (versions, device, CPU ISA, seed, commit). The verdict is a word on a coloured
badge (no emoji: Debian's chromium has no emoji font). The Markdown twin carries the same content
with figures linked by relative path.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlab import experiments
from genlab.errors import ConfigError, NotFoundError
from genlab.record import Metric, Record, RecordError, format_value, verdict

__all__ = ["Entry", "collect", "render", "write_report", "config_differences", "DEFAULT_READINGS"]

DEFAULT_READINGS = Path(__file__).resolve().parents[2] / "docs" / "readings"
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATE_FILE = "reproduce.json"  # genlab.reproduce.STATE_FILE (not imported: report must not need reproduce)
IGNORED_CONFIG = ("out", "resume")  # where the run went and how it was started, not what it computed
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".svg": "image/svg+xml", ".webp": "image/webp"}
# word -> colour of the badge; the words of genlab.record.VERDICTS, then the run states
COLOURS = {"meets": "#1a7f37", "beats": "#0550ae", "misses": "#cf222e", "no reference": "#6e7781",
           "failed": "#82071e", "no record": "#9a6700", "not run": "#57606a"}


@dataclass
class Entry:
    """One run in the report.

    Attributes:
        name: the experiment (registry name) or, for a run directory outside a reproduction, its folder name.
        run_dir: the run directory.
        record: its record, or None when there is none (failed, not run, old format).
        status: ``done``, ``failed``, ``no record`` or ``not run``.
        message: why there is no record (the run's error line, or the reader's error).
        seconds: wall seconds of the run as ``reproduce`` measured them, or None.
        command: the command line that ran it (from ``reproduce.json``), or [].
        log: path of its log, or None.
    """

    name: str
    run_dir: Path
    record: Record | None = None
    status: str = "done"
    message: str = ""
    seconds: float | None = None
    command: list[str] = field(default_factory=list)
    log: Path | None = None

    @property
    def anchor(self) -> str:
        return "run-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name)


def _entry(name: str, run_dir: Path, run_state: dict[str, Any] | None, base: Path | None) -> Entry:
    entry = Entry(name, run_dir)
    if run_state:
        entry.seconds = run_state.get("seconds")
        entry.command = list(run_state.get("command") or [])
        if run_state.get("log") and base is not None:
            entry.log = base / run_state["log"]
    try:
        entry.record = Record.read(run_dir)
    except (RecordError, FileNotFoundError) as err:
        if run_state and run_state.get("status") in ("failed", "no record"):
            entry.status, entry.message = run_state["status"], run_state.get("message", "")
        elif run_state is None and not run_dir.exists():
            entry.status, entry.message = "not run", "the reproduction stopped before this run started"
        else:
            message = str(err)
            if "not a genlab.record/1 record" in message:  # the experiment still writes its older metrics.json
                message = (f"{run_dir / 'metrics.json'} is in an older format, not a genlab.record/1 record: "
                           f"this experiment does not write a Record yet")
            entry.status, entry.message = "no record", message
    return entry


def collect(paths: list[str | Path]) -> list[Entry]:
    """The entries of ``paths``: run directories, or ``genlab reproduce`` folders (``reproduce.json``).

    Raises:
        FileNotFoundError: a path that does not exist, or a folder that is neither a run directory
            (``config.json`` or ``metrics.json``) nor a reproduction.
    """
    entries: list[Entry] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise NotFoundError(f"{path}: no such directory; give run directories or `genlab reproduce` folders")
        state_path = path / STATE_FILE
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except json.JSONDecodeError as err:
                raise RecordError(f"{state_path}: not valid JSON ({err}); delete it and rerun `genlab reproduce`")
            runs = state.get("runs", {})
            names = list(state.get("planned", [])) + [n for n in runs if n not in state.get("planned", [])]
            for name in names:
                run_state = runs.get(name)
                run_dir = path / (run_state.get("run_dir", name) if run_state else name)
                entries.append(_entry(name, run_dir, run_state, path))
        elif (path / "metrics.json").exists() or (path / "config.json").exists():
            entry = _entry(path.name, path, None, None)
            if entry.record is not None:
                entry.name = entry.record.experiment if not any(e.name == entry.record.experiment
                                                                for e in entries) else path.name
            entries.append(entry)
        else:
            raise NotFoundError(f"{path}: neither a run directory (no config.json or metrics.json) nor a "
                                    f"`genlab reproduce` folder (no {STATE_FILE})")
    return entries


def _normalise(value: Any) -> Any:
    """A config value as JSON would hold it (tuples -> lists, Paths -> strings)."""
    return json.loads(json.dumps(value, default=str))


def config_differences(experiment: str, config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(option, value, default) for every option of ``config`` that differs from the experiment's
    config-class default, ``out`` and ``resume`` left out. For an unregistered experiment every
    option is listed, with default None."""
    try:
        config_cls = experiments.get(experiment).config
        defaults = {}
        for f in dataclasses.fields(config_cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = _normalise(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = _normalise(f.default_factory())
    except KeyError:
        defaults = {}
    rows = []
    for key, value in config.items():
        if key in IGNORED_CONFIG or key == "experiment":
            continue
        value = _normalise(value)
        if key not in defaults or defaults[key] != value:
            rows.append((key, value, defaults.get(key)))
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value).lower()
    if isinstance(value, float):
        return format_value(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _config_cell(value: Any) -> str:
    """A config value as it would be typed on the command line (``1e-05``, ``spectral-norm weight-clip``)."""
    if value is None:
        return "–"
    if isinstance(value, list):
        return " ".join(_config_cell(v) for v in value) or "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _figure_data(path: Path) -> str | None:
    """``data:`` URI of an image file, or None if it is missing or not an image."""
    mime = MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _reading(name: str, readings: Path | None) -> str | None:
    if readings is None:
        return None
    path = readings / f"{name}.md"
    return path.read_text() if path.is_file() else None


def _metric_view(m: Metric, headline: bool) -> dict[str, Any]:
    word, tol = verdict(m)
    ref = m.reference
    return {
        "name": m.name, "description": m.description, "headline": headline, "unit": m.unit,
        "measured": format_value(m.value, m.stderr, m.unit),
        "seeds": m.n_seeds,
        "reference": format_value(ref.value, ref.stderr, m.unit) if ref else "–",
        "ref_section": ref.section if ref else "", "ref_note": ref.note if ref else "",
        "tolerance": format_value(tol) if tol is not None else "–",
        "verdict": word, "colour": COLOURS[word],
    }


def _environment_rows(record: Record) -> list[tuple[str, str]]:
    env = dict(record.environment)
    rows = []
    device = env.get("device")
    if env.get("gpu"):
        device = f"{device} ({env['gpu']})"
    isa = env.get("cpu_isa") or env.get("cpu_capability")
    seed = record.config.get("seed", env.get("seed"))
    for key, value in (("device", device), ("CPU", env.get("processor")), ("CPU ISA", isa or "not recorded"),
                       ("CPU cores / torch threads", f"{env.get('cpu_count', '–')} / {env.get('torch_threads', '–')}"),
                       ("seed", seed), ("commit", env.get("git_commit")), ("python", env.get("python")),
                       ("platform", env.get("platform"))):
        if value is not None:
            rows.append((key, str(value)))
    for pkg, version in (env.get("versions") or {}).items():
        rows.append((pkg, str(version) if version else "not installed"))
    shown = {"device", "gpu", "processor", "cpu_isa", "cpu_capability", "cpu_count", "torch_threads", "seed",
             "git_commit", "python", "platform", "versions"}
    rows += [(k, _cell(v)) for k, v in env.items() if k not in shown]
    return rows


def _view(entry: Entry, readings: Path | None, md_base: Path) -> dict[str, Any]:
    """What the templates need of an entry (strings, already formatted)."""
    r = entry.record
    view: dict[str, Any] = {
        "name": entry.name, "anchor": entry.anchor, "status": entry.status, "message": entry.message,
        "status_colour": COLOURS.get(entry.status, "#57606a"), "run_dir": str(entry.run_dir),
        "command": " ".join(entry.command), "reading": _reading(entry.name if r is None else r.experiment, readings),
        "log": str(entry.log) if entry.log else None,
    }
    if r is None:
        view.update(title=entry.name, spec_section="", headline=[], metrics=[], tables=[], figures=[], notes=[],
                    config=[], environment=[], time=_duration(entry.seconds), device="–")
        return view
    headline = r.headline()
    figures = []
    for f in r.figures:
        path = entry.run_dir / f.path
        figures.append({"caption": f.caption or f.path, "path": f.path, "data": _figure_data(path),
                        "md_path": os.path.relpath(path, md_base)})
    run_seconds = sum(s for s in (r.train_seconds, r.eval_seconds) if s is not None) \
        if (r.train_seconds is not None or r.eval_seconds is not None) else entry.seconds
    env = r.environment
    view.update(
        title=r.title, spec_section=r.spec_section,
        headline=[_metric_view(m, True) for m in headline],
        metrics=[_metric_view(m, m in headline) for m in r.metrics],
        tables=[{"name": t.name, "caption": t.caption, "columns": t.columns,
                 "rows": [[_cell(c) for c in row] for row in t.rows]} for t in r.tables],
        figures=figures, notes=list(r.notes),
        config=[(k, _config_cell(v), _config_cell(d)) for k, v, d in config_differences(r.experiment, r.config)],
        environment=_environment_rows(r),
        time=_duration(run_seconds),
        train_time=_duration(r.train_seconds), eval_time=_duration(r.eval_seconds),
        device=(f"{env.get('device', '–')}" + (f" ({env['gpu']})" if env.get("gpu") else "")),
    )
    return view


def _markdown_to_html(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def render(entries: list[Entry], fmt: str = "html", readings: Path | None = DEFAULT_READINGS,
           md_base: Path | None = None, title: str = "genlab: the course, reproduced") -> str:
    """The report of ``entries`` as ``fmt`` (``html`` or ``md``).

    Args:
        entries: from :func:`collect`.
        fmt: ``html`` (self-contained: figures as data URIs, inline CSS, no scripts or links out)
            or ``md`` (figures linked relative to ``md_base``).
        readings: folder of ``<experiment>.md`` readings, or None for none.
        md_base: folder the Markdown file will live in (for relative figure links); default cwd.
    """
    import jinja2

    if fmt not in ("html", "md"):
        raise ConfigError(f"unknown report format {fmt!r}; use html or md")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=(fmt == "html"),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["markdown"] = _markdown_to_html
    env.filters["mdcell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    views = [_view(e, readings, (md_base or Path.cwd()).resolve()) for e in entries]
    seen: dict[str, int] = {}
    for v in views:  # two runs of one experiment: run-vae, run-vae-2
        seen[v["anchor"]] = seen.get(v["anchor"], 0) + 1
        if seen[v["anchor"]] > 1:
            v["anchor"] += f"-{seen[v['anchor']]}"
    counts = {}
    for v in views:
        for m in v["headline"]:
            counts[m["verdict"]] = counts.get(m["verdict"], 0) + 1
        if v["status"] != "done":
            counts[v["status"]] = counts.get(v["status"], 0) + 1
    template = env.get_template(f"report.{fmt}.j2")
    return template.render(title=title, runs=views, counts=counts, colours=COLOURS,
                           generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))


def write_report(paths: list[str | Path], html: str | Path | None, md: str | Path | None = None,
                 readings: Path | None = DEFAULT_READINGS) -> list[Entry]:
    """Collect ``paths`` and write the HTML report to ``html`` and its Markdown twin to ``md``
    (either may be None). Returns the entries. Raises as :func:`collect`."""
    entries = collect(paths)
    readings = readings if readings is None or Path(readings).is_dir() else None
    if html is not None:
        html = Path(html)
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render(entries, "html", readings))
    if md is not None:
        md = Path(md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(render(entries, "md", readings, md_base=md.parent))
    return entries
