"""genlab report: records (built here, with tiny PNG figures) -> HTML and Markdown, checked by value."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import genlab_here
from genlab import report
from genlab.record import Figure, Metric, Record, Reference, Table


def png_bytes(colour: tuple[int, int, int], size: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def make_run(path: Path, experiment: str, metrics: list[Metric], figures: dict[str, bytes] | None = None,
             config: dict | None = None, **kwargs) -> Path:
    """A run directory holding a record (and its figure files) as an experiment would write it."""
    path.mkdir(parents=True)
    figs = []
    for name, data in (figures or {}).items():
        (path / "figures").mkdir(exist_ok=True)
        (path / "figures" / name).write_bytes(data)
        figs.append(Figure(f"figures/{name}", caption=f"caption of {name}"))
    Record(experiment=experiment, title=kwargs.pop("title", f"{experiment} title"), spec_section="§4",
           metrics=metrics, figures=figs, config=config or {}, environment={
               "device": "cpu", "processor": "x86_64", "cpu_isa": "AVX512", "seed": 42, "git_commit": "abc123",
               "python": "3.11.7", "versions": {"torch": "2.13.0", "numpy": "2.0"}}, **kwargs).write(path)
    return path


RED, GREEN = png_bytes((255, 0, 0)), png_bytes((0, 160, 0))


@pytest.fixture
def runs(tmp_path):
    vae = make_run(tmp_path / "vae_run", "vae", [
        # |102.01 - 98.12| = 3.89 <= max(2 sqrt(0.31^2 + 0.77^2), 5 % of 98.12) = 4.906 -> meets
        Metric("negative_elbo", 102.01, "nats", stderr=0.31, n_seeds=3, lower_is_better=True, headline=True,
               reference=Reference(98.12, stderr=0.77, section="§4"), description="test negative ELBO"),
        Metric("kl", 30.0, "nats", lower_is_better=None, reference=Reference(20.38, 0.38, "§4")),  # misses
        Metric("iwae_nll", 95.0, "nats"),  # no reference
    ], figures={"samples.png": RED, "curves.png": GREEN},
        config={"experiment": "vae", "seed": 42, "iterations": 20, "lr": 0.001, "out": "/somewhere", "resume": True,
                "seeds": 3},
        tables=[Table("per seed", ["seed", "negative_elbo"], [[42, 101.5], [43, 102.52]], caption="one row a seed")],
        train_seconds=30.0, eval_seconds=12.0, notes=["a note about the run"])
    reinforce = make_run(tmp_path / "reinforce_run", "reinforce", [
        # 92.4 vs 75 (higher is better), outside 5 % of 75 -> beats
        Metric("accuracy_plain", 92.4, "%", stderr=1.3, n_seeds=3, lower_is_better=False, headline=True,
               reference=Reference(75.0, section="§8"))], figures={"acc.png": GREEN}, config={"seed": 42})
    return vae, reinforce


class Page(HTMLParser):
    """The bits of the report the tests look at: overview rows, sections, images, links."""

    def __init__(self, html: str):
        super().__init__()
        self.rows, self.sections, self.imgs, self.links, self.scripts = [], [], [], [], 0
        self._in_overview = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "overview":
            self._in_overview = True
        if tag == "tr" and self._in_overview and "data-experiment" in a:
            self.rows.append((a["data-experiment"], a["data-status"]))
        if tag == "section":
            self.sections.append(a.get("data-experiment"))
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "a") and a.get("href"):
            self.links.append(a["href"])
        if tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_overview = False


def test_html_report_holds_verdicts_figures_config_and_environment(runs, tmp_path):
    vae, reinforce = runs
    readings = tmp_path / "readings"
    readings.mkdir()
    (readings / "vae.md").write_text("The ELBO gap is **amortisation**.\n")
    entries = report.write_report([vae, reinforce], tmp_path / "r.html", tmp_path / "r.md", readings=readings)
    assert [e.name for e in entries] == ["vae", "reinforce"] and all(e.status == "done" for e in entries)
    html = (tmp_path / "r.html").read_text()
    page = Page(html)
    assert page.rows == [("vae", "done"), ("reinforce", "done")]
    assert page.sections == ["vae", "reinforce"]
    assert page.scripts == 0 and all(link.startswith("#") for link in page.links)  # nothing leaves the page
    # every figure embedded byte for byte, in record order
    assert len(page.imgs) == 3 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert [base64.b64decode(src.split(",", 1)[1]) for src in page.imgs] == [RED, GREEN, GREEN]
    # overview: headline only (kl and iwae_nll are not headline), verdicts by word and colour
    overview = html.split('<table id="overview">')[1].split("</table>")[0]
    assert "negative_elbo" in overview and "kl" not in overview
    assert "102.0 ± 0.31 nats" in overview and "98.12 ± 0.77 nats" in overview
    assert re.search(r'data-verdict="meets" style="background: #1a7f37">meets<', overview)
    assert re.search(r'data-verdict="beats" style="background: #0550ae">beats<', overview)
    assert "92.40 ± 1.30%" in overview and "42.0 s" in overview  # 30 s training + 12 s evaluation
    vae_section = html.split('id="run-vae"')[1].split("</section>")[0]
    assert ">misses<" in vae_section and ">no reference<" in vae_section  # kl, iwae_nll in the metric table
    assert "<strong>amortisation</strong>" in vae_section  # the reading, rendered from Markdown
    config = vae_section.split('<table class="config">')[1].split("</table>")[0]
    # iterations (default 10000) and seeds (default 1) differ; lr is the default; out and resume are left out
    assert "<code>iterations</code></td><td>20</td><td>10000</td>" in config
    assert "<code>seeds</code></td><td>3</td><td>1</td>" in config
    assert "<code>lr</code>" not in config and "<code>out</code>" not in config and "resume" not in config
    env = vae_section.split('<table class="environment">')[1]
    for key, value in (("CPU ISA", "AVX512"), ("seed", "42"), ("commit", "abc123"), ("torch", "2.13.0")):
        assert f"<th>{key}</th><td>{value}</td>" in env
    assert "<td>43</td><td>102.5</td>" in vae_section  # the per-seed table
    assert "a note about the run" in vae_section


def test_markdown_twin_carries_the_same_content(runs, tmp_path):
    vae, reinforce = runs
    report.write_report([vae, reinforce], None, tmp_path / "out" / "r.md", readings=None)
    md = (tmp_path / "out" / "r.md").read_text()
    overview = md.split("## Overview")[1].split("<a id=")[0]
    rows = [line for line in overview.splitlines() if line.startswith("| [")]
    assert len(rows) == 2
    assert "| negative_elbo | 102.0 ± 0.31 nats | 98.12 ± 0.77 nats | **meets** | 42.0 s | cpu |" in rows[0]
    assert "**beats**" in rows[1]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 3
    for link in links:  # relative to the Markdown file, and they resolve
        assert not Path(link).is_absolute() and (tmp_path / "out" / link).is_file()
    assert "| `iterations` | 20 | 10000 |" in md and "| CPU ISA | AVX512 |" in md
    assert "| 43 | 102.5 |" in md


def test_reproduction_folder_lists_failed_and_missing_runs(runs, tmp_path):
    vae, _ = runs
    folder = tmp_path / "course"
    folder.mkdir()
    vae.rename(folder / "vae")
    (folder / "dcgan").mkdir()
    (folder / "dcgan" / "metrics.json").write_text(json.dumps({"epochs": 1}))  # an old-format record
    (folder / "reproduce.json").write_text(json.dumps({"profile": "smoke", "planned": ["vae", "gan", "dcgan", "wgan"],
        "runs": {"vae": {"status": "done", "seconds": 5.0, "run_dir": "vae"},
                 "gan": {"status": "failed", "seconds": 1.0, "returncode": 2, "run_dir": "gan",
                         "message": "exit 2: error: --subset must be >= 1", "command": ["genlab", "run", "gan"],
                         "log": "logs/gan.log"}}}))
    entries = report.write_report([folder], tmp_path / "r.html", tmp_path / "r.md", readings=None)
    assert [(e.name, e.status) for e in entries] == [("vae", "done"), ("gan", "failed"), ("dcgan", "no record"),
                                                     ("wgan", "not run")]
    html = (tmp_path / "r.html").read_text()
    assert Page(html).rows == [("vae", "done"), ("gan", "failed"), ("dcgan", "no record"), ("wgan", "not run")]
    assert "error: --subset must be &gt;= 1" in html and "older format" in html
    assert 'data-verdict="failed" style="background: #82071e">failed<' in html
    md = (tmp_path / "r.md").read_text()
    assert "| [gan](#run-gan) | – | – | – | **failed** |" in md and "**not run**" in md


def test_missing_figure_is_reported_not_fatal(tmp_path):
    run = make_run(tmp_path / "run", "minimax", [Metric("distance", 1.0)], figures={"a.png": RED})
    (run / "figures" / "a.png").unlink()
    report.write_report([run], tmp_path / "r.html", None, readings=None)
    html = (tmp_path / "r.html").read_text()
    assert "figure figures/a.png is missing" in html and "<img" not in html


def test_report_cli_and_its_errors(runs, tmp_path):
    vae, reinforce = runs
    proc = genlab_here("report", str(vae), str(reinforce), "--out", str(tmp_path / "x" / "r.html"))
    assert "2 runs, 2 with a record" in proc.stdout
    assert (tmp_path / "x" / "r.md").is_file()
    assert Page((tmp_path / "x" / "r.html").read_text()).rows[1][0] == "reinforce"
    proc = genlab_here("report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html"), check=False)
    assert proc.returncode == 2 and "nope: no such directory" in proc.stderr
    proc = genlab_here("report", str(vae), "--out", str(tmp_path / "r.pdf"), check=False)
    assert proc.returncode == 2 and "name it FILE.html" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = genlab_here("report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html"), check=False)
    assert proc.returncode == 2 and "neither a run directory" in proc.stderr


# ---- in a real browser: Debian's chromium, headless, in a network namespace without any interface up ----

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _offline_prefix() -> list[str]:
    """``unshare -n`` where permitted: the page must render with no network at all."""
    import shutil
    import subprocess

    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless chromium with a fresh profile; its stdout."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed: `make install` installs Debian's chromium "
                    "(apt-get install chromium, as root); without root or apt it cannot be installed here")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    proc = subprocess.run([*_offline_prefix(), exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(tmp_path: Path, html: Path, height: int = 1600) -> Image.Image:
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size=1200,{height}", html.as_uri())
    return Image.open(shot).convert("RGB")


def test_browser_renders_embedded_figures(tmp_path):
    big_red = png_bytes((255, 0, 0), size=80)
    run = make_run(tmp_path / "run", "vae", [Metric("negative_elbo", 102.0, "nats", headline=True,
                                                    reference=Reference(98.12, 0.77, "§4"))],
                   figures={"red.png": big_red})
    report.write_report([run], tmp_path / "r.html", None, readings=None)
    page = Page(chromium(tmp_path, "--dump-dom", (tmp_path / "r.html").as_uri()))
    assert page.rows == [("vae", "done")] and page.sections == ["vae"]
    assert len(page.imgs) == 1 and base64.b64decode(page.imgs[0].split(",", 1)[1]) == big_red
    pixels = np.asarray(screenshot(tmp_path, tmp_path / "r.html")).reshape(-1, 3)
    # the embedded figure was decoded and drawn (pure red appears nowhere else on the page) ...
    assert (pixels == (255, 0, 0)).all(axis=1).sum() >= 60 * 60
    # ... and the verdict badge in its colour (#1a7f37, meets)
    assert (pixels == (0x1A, 0x7F, 0x37)).all(axis=1).sum() > 50


def test_two_runs_of_one_experiment_get_their_own_anchors(tmp_path):
    a = make_run(tmp_path / "a", "vae", [Metric("negative_elbo", 100.0, headline=True)])
    b = make_run(tmp_path / "b", "vae", [Metric("negative_elbo", 101.0, headline=True)])
    assert [e.name for e in report.collect([a, b])] == ["vae", "b"]  # one call: the second named by its folder
    html = report.render(report.collect([a]) + report.collect([b]), "html", readings=None)
    assert html.count('id="run-vae"') == 1 and html.count('id="run-vae-2"') == 1
    assert 'href="#run-vae-2"' in html
