"""Saved predictions carry their inputs (issue 25: report.html's sample errors lacked the text),
and an image run's report.html has a grid of sample predictions per task (issue 28): thumbnails
embedded as data URIs, predicted vs true label, errors first; images read from files and from
.npz rows. Real runs (tiny random BERT, tiny random CNN); the pages rendered in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from test_html_report import CHROMIUM, console_errors
from test_vision import image_config, write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Figures(HTMLParser):
    """Every grid figure of a report: (section id, class, thumbnail data URI or None, caption text)."""

    def __init__(self):
        super().__init__()
        self.figures, self.section, self._caption = [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self.section = attrs.get("id")
        elif tag == "figure":
            self.figures.append([self.section, attrs.get("class"), None, ""])
        elif tag == "img" and self.figures and self._caption is None and self.figures[-1][2] is None:
            self.figures[-1][2] = attrs.get("src")
        elif tag == "figcaption":
            self._caption = ""

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.figures[-1][3], self._caption = self._caption, None

    def handle_data(self, data):
        if self._caption is not None:
            self._caption += data


def test_saved_predictions_carry_the_input_text_and_the_report_shows_it(tiny_backbone, tmp_path):
    import polytask
    from polytask.config import from_dict

    run = polytask.train(from_dict(tiny_config(tiny_backbone, tmp_path, max_steps=2, eval_every=2)), progress=False)
    saved = json.loads((run / "predictions" / "dev.json").read_text())
    topic = saved["topic"]
    assert len(topic["inputs"]) == len(topic["references"]) == len(topic["predictions"])
    from polytask.dataset import prepare

    examples = prepare(from_dict(tiny_config(tiny_backbone, tmp_path)), splits=("dev",))
    texts = [e.fields["text"] for e in examples["topic"].examples["dev"]]
    assert topic["inputs"] == texts
    pairs = examples["similarity"].examples["dev"]
    assert saved["similarity"]["inputs"][0] == f"{pairs[0].fields['text']} || {pairs[0].fields['text_pair']}"
    assert saved["entities"]["inputs"][0] == " ".join(examples["entities"].examples["dev"][0].fields["tokens"])
    wrong = [i for i, (p, r) in enumerate(zip(topic["predictions"], topic["references"])) if p != r]
    assert wrong, "two steps of a random model should get some dev example wrong"
    page = (run / "report.html").read_text()
    first = wrong[0]
    row = f"<tr><td>{first}</td><td>{texts[first]}</td><td>{topic['references'][first]}</td>"
    assert row in page and "<th>input</th>" in page


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """Two classification tasks from JSONL image paths, and one from an .npz file's rows."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    from polytask.config import from_dict
    from polytask.train import train

    root = tmp_path_factory.mktemp("report_images")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(root / "cnn")
    write_split(root, "train", 16, 1)
    write_split(root, "dev", 30, 2)  # more than the 24 shown
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 255, (12, 12, 12), dtype=np.uint8)  # (N, H, W) grey
    np.savez(root / "shade.npz", picture=digits, shade=(digits.mean((1, 2)) > 127).astype(int))
    cfg = image_config(root, str(root / "cnn"), max_steps=2, eval_every=2)
    cfg["tasks"].append({"name": "shade", "type": "classification", "columns": {"image": "picture", "label": "shade"},
                         "data": {"train": "shade.npz", "dev": "shade.npz"}})
    return root, train(from_dict(cfg), progress=False)


def test_image_report_has_a_grid_of_sample_predictions_errors_first(image_run):
    root, run = image_run
    saved = json.loads((run / "predictions" / "dev.json").read_text())
    assert saved["left"]["inputs"][0] == str(root / "dev0.png")
    assert re.fullmatch(r".*shade\.npz:1", saved["shade"]["inputs"][0])
    parser = Figures()
    parser.feed((run / "report.html").read_text())
    for task, n in (("left", 30), ("right", 30), ("shade", 12)):
        got = saved[task]
        figures = [f for f in parser.figures if f[0] == f"samples-{task}"]
        assert len(figures) == min(24, n)
        wrong = [i for i, (p, r) in enumerate(zip(got["predictions"], got["references"])) if p != r]
        expected = (wrong + [i for i in range(n) if i not in wrong])[:24]  # errors first, then in order
        assert [int(re.match(r"#(\d+)", f[3])[1]) for f in figures] == expected
        for (_, cls, src, caption), i in zip(figures, expected):
            assert cls == ("err" if i in wrong else "ok")
            assert f"predicted {got['predictions'][i]}" in caption and f"true {got['references'][i]}" in caption
            thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
            if task == "shade":  # the .npz row itself (grey, 12 x 12), as RGB
                pixels = np.load(root / "shade.npz")["picture"][i]
                assert np.array_equal(np.asarray(thumb)[:, :, 0], pixels)
            else:
                assert thumb.size == (20, 20)  # never upscaled
                assert np.array_equal(np.asarray(thumb), np.asarray(Image.open(root / f"dev{i}.png").convert("RGB")))


def test_image_report_renders_in_headless_chromium(image_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    import subprocess

    shot = tmp_path / "report.png"  # tall enough for every section down to the grids
    proc = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,8000",
                           f"--user-data-dir={tmp_path / 'profile'}", (image_run[1] / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert console_errors(log) == [], log[-2000:]
    screen = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (screen[:, :, 0] > 200) & (screen[:, :, 1] < 110) & (screen[:, :, 2] < 110)  # the error borders (#d55)
    saved = json.loads((image_run[1] / "predictions" / "dev.json").read_text())
    any_wrong = any(p != r for t in saved.values() for p, r in zip(t["predictions"], t["references"]))
    assert red.any() == any_wrong
