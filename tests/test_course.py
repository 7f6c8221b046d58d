"""The smoke course: every registered experiment through ``genlab reproduce all --profile smoke``
(each a ``genlab run`` subprocess, seconds long), its records and the report built from them.

One course serves every test here, so each experiment's smoke run happens once in the suite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import genlab
from genlab import experiments
from genlab.record import Record
from test_report import Page, chromium, screenshot

NAMES = list(experiments.REGISTRY)


@pytest.fixture(scope="module")
def smoke_course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    # one thread per run: the default, cores // jobs = 2, would have each run's OpenMP team spin
    # against the other xdist worker on a 2-core machine
    proc = genlab("reproduce", "all", "--profile", "smoke", "--device", "cpu", "--threads", "1", "--out", str(out),
                  check=False, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: some run failed or wrote no record (reported)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_through_the_cli_writes_a_valid_record(name, smoke_course):
    out = smoke_course / name
    log = (smoke_course / "logs" / f"{name}.log").read_text()
    assert json.loads((smoke_course / "reproduce.json").read_text())["runs"][name]["status"] == "done", log[-3000:]
    record = Record.read(out)  # validates metrics.json
    assert record.experiment == name and record.metrics and record.headline()
    assert record.train_seconds is not None and record.train_seconds >= 0
    assert record.config["seed"] == 42 and record.environment["device"] == "cpu"
    for figure in record.figures:
        assert (out / figure.path).is_file(), figure.path
    assert (out / "summary.md").read_text().startswith(f"# {record.title}")


@pytest.mark.slow
def test_smoke_course_report_in_the_browser(smoke_course, tmp_path):
    html = smoke_course / "report.html"
    assert (smoke_course / "report.md").is_file()
    page = Page(chromium(tmp_path, "--dump-dom", html.as_uri()))
    assert [name for name, _ in page.rows] == NAMES  # a row for every registered experiment
    assert page.sections == NAMES
    # every figure of every record is embedded (a data: URI), none linked
    figures = 0
    for name in NAMES:
        try:
            figures += len(Record.read(smoke_course / name).figures)
        except (ValueError, FileNotFoundError):
            pass
    assert len(page.imgs) == figures and all(src.startswith("data:image/") for src in page.imgs)
    # every row has a verdict word (or says why there is no record)
    dom = chromium(tmp_path, "--dump-dom", html.as_uri())
    overview = dom.split('id="overview"')[1].split("</table>")[0]
    assert overview.count("badge verdict") >= len(NAMES)
    state = json.loads((smoke_course / "reproduce.json").read_text())["runs"]
    for name, status in page.rows:
        assert status in ("done", "failed", "no record")
        assert status == "done" or state[name]["status"] == status
    image = screenshot(tmp_path, html)
    variance = np.asarray(image.convert("L"), dtype=np.float64).var()
    assert variance > 100, f"blank screenshot (grey-level variance {variance:.1f})"
    colours = np.unique(np.asarray(image).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # text, badges, rules: more than a couple of colours
