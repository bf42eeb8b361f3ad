"""``report.html`` (issue 16, item 4): written at the end of training and for compare folders;
self-contained (no network); renders in headless Chromium with no console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import tiny_config
from polytask.config import from_dict
from polytask.html_report import write_compare_report

RUN_SECTIONS = ["Training curves", "Dev metrics per task", "Gradient cosines over time", "How this run was made",
                "Data", "Resolved config"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.srcs, self.tags, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.srcs.append(attrs[key])
        self._in = tag if tag in ("h1", "h2") else None

    def handle_data(self, data):
        if self._in:
            self.headings.append(data.strip())


def parse(path) -> Collect:
    c = Collect()
    c.feed(path.read_text())
    return c


def render(path, tmp_path):
    """Screenshot ``path`` in headless Chromium; returns (screenshot path, stderr log)."""
    shot = tmp_path / f"{path.stem}.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,2000",
                           f"--user-data-dir={tmp_path / 'profile'}", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return shot, proc.stderr


def console_errors(log: str) -> list[str]:
    """Console messages (the reports have no script, so any message is an error) and load failures."""
    return [ln for ln in log.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln or "Failed to load resource" in ln]


@pytest.fixture(scope="module")
def run(tiny_backbone, tmp_path_factory):
    import polytask

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("runs"), max_steps=10, eval_every=5, log_every=5,
                      cosine_every=5)
    return polytask.train(from_dict(raw), progress=False)


def test_training_writes_a_self_contained_report(run):
    report = run / "report.html"
    assert report.is_file() and (run / "training.png").is_file()
    c = parse(report)
    assert all(s in c.headings for s in RUN_SECTIONS)
    assert c.srcs and all(s.startswith("data:image/png;base64,") for s in c.srcs)
    assert "script" not in c.tags and "link" not in c.tags
    text = report.read_text()
    assert not re.search(r"https?://", text)
    assert "sentiment" in text and "accuracy" in text


@pytest.fixture
def compare_folder(tmp_path, run):
    root = tmp_path / "cmp"
    root.mkdir()
    shutil.copy(run / "training.png", root / "delta_m.png")
    (root / "report.md").write_text(
        "# Did multi-task learning help? `demo`\n\n## Verdict\n\n- **equal**: Delta-m +1.2%\n\n"
        "## Test results (main metric)\n\n| task | single | equal |\n|---|---|---|\n| sentiment | 0.81 | 0.83 |\n\n"
        "## Training cost\n\n| run | seconds |\n|---|---|\n| equal | 12 |\n\n"
        "## Plots\n\n**Delta-m per method**\n\n![delta_m](delta_m.png)\n\n![gone](missing.png)\n")
    return root


def test_compare_report_embeds_tables_and_plots(compare_folder):
    out = write_compare_report(compare_folder)
    c = parse(out)
    assert {"Verdict", "Training cost", "Plots"} <= set(c.headings)
    assert c.srcs == [c.srcs[0]] and c.srcs[0].startswith("data:image/png;base64,")
    text = out.read_text()
    assert "<td>0.83</td>" in text and "<b>equal</b>" in text and "missing.png not found" in text


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_reports_render_in_headless_chromium(run, compare_folder, tmp_path):
    for page in (run / "report.html", write_compare_report(compare_folder)):
        shot, log = render(page, tmp_path)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert console_errors(log) == [], log[-2000:]
    bad = tmp_path / "bad.html"  # the check itself sees a console error
    bad.write_text("<html><body><script>console.error('boom'); missingFunction();</script></body></html>")
    assert len(console_errors(render(bad, tmp_path)[1])) == 2


def test_cli_run_report_explains_the_run_and_renders(tiny_backbone, tmp_path):
    """Issue 25.11: report.html was thin; it now has the command and wall time, data sizes and
    label counts, a confusion matrix and sample errors per classification task, the resolved
    config, and no weights table when every weight was 1; rendered in headless Chromium."""
    import sys

    import yaml

    raw = tiny_config(tiny_backbone, tmp_path / "runs", max_steps=4, eval_every=4, log_every=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "polytask.cli", "train", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = tmp_path / "runs" / "tiny" / "report.html"
    c = parse(report)
    assert all(s in c.headings for s in RUN_SECTIONS), c.headings
    assert "Task weights" not in c.headings
    text = report.read_text()
    assert f"polytask train {path} --no-progress" in text and "training wall time:" in text
    for task in ("sentiment", "topic"):
        assert f"{task}: confusion matrix and errors (dev)" in c.headings
    assert "predicted positive" in text and "true negative" in text  # sentiment's labels
    assert "<td>topic</td><td>160</td><td>40</td><td>40</td>" in text  # train / dev / test sizes
    assert "max_steps: 4" in text
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    shot, log = render(report, tmp_path)
    assert shot.stat().st_size > 10_000 and console_errors(log) == [], log[-2000:]
