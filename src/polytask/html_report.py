"""``report.html``: one self-contained page per run folder and per compare folder (no network:
plots are embedded as base64 PNG data URIs, the CSS is inline, tables are HTML).

A run's page: training curves (:func:`polytask.report.training_figure`), dev (and test) metrics
per task, task weights, and the gradient cosines as a heatmap over time; sample errors with
their inputs, and for image tasks a grid of sample predictions (thumbnails as data URIs, errors
first). A compare folder's page
is its ``report.md`` (per-task table, Delta-m, training and serving cost, plots) as HTML, with the
plots it references embedded.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter
from pathlib import Path

from polytask.files import atomic_write
from polytask.report import cosine_heatmap, training_figure, weights_vary
from polytask.report_dense import dense_grid, is_dense

REPORT_HTML = "report.html"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee}code{background:#f4f4f4;padding:0 .2em}
p.note{color:#555;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:.5em}.grid figure{margin:0;width:112px;font-size:.75em;text-align:center;
border:2px solid #9c9;padding:3px}.grid figure.err{border-color:#d55}.grid figure.num{border-color:#bbb}.grid img{width:96px;height:96px;
object-fit:contain;image-rendering:pixelated;border:0}
"""


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def table(head: list[str], rows: list[list]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# A run folder


def write_run_report(run) -> Path:
    """Write ``report.html`` next to the run's ``training.png`` (``run``: a RunFolder)."""
    plot_path = Path(run.plot_path)
    png = plot_path.read_bytes() if plot_path.is_file() else None
    affinity = run.read_affinity() if hasattr(run, "read_affinity") else None
    extra = run_details(run)
    if affinity and "tag" in affinity:
        extra += affinity_section(affinity, run.affinity_plots())
    text = render_run(run.events(), run.read_summary(), png, title=Path(run.path).name, extra=extra)
    out = Path(run.report_path)
    atomic_write(out, text.encode())
    return out


def render_run(events: list[dict], summary: dict, training_png: bytes | None = None, title: str = "run",
               extra: list[str] | None = None) -> str:
    """The run page: training curves, dev metrics per task, task weights, gradient cosines (and
    ``extra`` sections at the end, e.g. :func:`affinity_section`)."""
    if training_png is None:
        training_png = figure_png(training_figure(events))
    body = [f"<h1>Training report: {html.escape(title)}</h1>",
            f"<p class=\"note\">best step {_cell(summary.get('best_step'))} of {_cell(summary.get('steps'))}; "
            f"dev macro {_cell(summary.get('dev_macro'))}; test macro {_cell(summary.get('test_macro'))}</p>",
            "<h2 id=\"curves\">Training curves</h2>", f"<img alt=\"training curves\" src=\"{data_uri(training_png)}\">",
            "<h2 id=\"metrics\">Dev metrics per task</h2>", metrics_tables(summary, events),
            *(["<h2 id=\"weights\">Task weights</h2>", weights_table(events)] if weights_vary(
                [e for e in events if e.get("kind") == "train"]) else
              ["<p class=\"note\">Every task weight was 1 at every step (equal weighting): no weights table.</p>"]),
            "<h2 id=\"cosines\">Gradient cosines over time</h2>"]
    heatmap = cosine_heatmap(events)
    if heatmap is None:
        body.append("<p class=\"note\">No gradient cosines were logged (one task, or cosine_every: 0).</p>")
    else:
        body.append(f"<img alt=\"gradient cosine heatmap\" src=\"{data_uri(figure_png(heatmap))}\">")
    return page(f"polytask report: {title}", body + list(extra or []))


def run_details(run) -> list[str]:
    """What made the run and what it saw: the command and wall time, data sizes and label counts,
    a confusion matrix and sample errors per classification task (dev), the resolved config."""
    import sys

    import yaml

    from polytask.config import to_dict

    summary, events = run.read_summary(), run.events()
    start = next((e for e in events if e.get("kind") == "start"), {})
    cfg = run.read_config() if run.has_config() else None
    preds = {split: run.read_predictions(split) or {} for split in ("dev", "test")}
    body = ["<h2 id=\"run\">How this run was made</h2>",
            f"<p>command: <code>{html.escape(' '.join([_program(sys.argv[0]), *sys.argv[1:]]))}</code><br>"
            f"training wall time: {_cell(summary.get('train_seconds'))} s for {_cell(summary.get('steps'))} steps "
            f"(best step {_cell(summary.get('best_step'))})"
            + (f"; waiting for data: {summary['data_wait_seconds']:.3g} s ({100 * summary['data_wait_share']:.1f}%)"
               if "data_wait_share" in summary else "") + "</p>",
            "<h2 id=\"data\">Data</h2>", data_table(start.get("train_sizes") or {}, preds)]
    kinds = {t.name: t.type for t in cfg.tasks} if cfg else {}
    for task, got in preds["dev"].items():
        if kinds.get(task) == "classification" and got.get("references"):
            body += [f"<h2 id=\"confusion-{html.escape(task)}\">{html.escape(task)}: confusion matrix and errors "
                     "(dev)</h2>", *classification_details(got["predictions"], got["references"], got.get("inputs"))]
        if cfg is not None and cfg.model.kind == "vision" and got.get("inputs") and got.get("references"):
            column = next(t.columns.get("image", "image") for t in cfg.tasks if t.name == task)
            body += [f"<h2 id=\"samples-{html.escape(task)}\">{html.escape(task)}: sample predictions (dev)</h2>",
                     *(dense_grid(got) if is_dense(got["predictions"]) else sample_grid(got, column))]
    if cfg is not None:
        body += ["<h2 id=\"config\">Resolved config</h2>",
                 f"<pre>{html.escape(yaml.safe_dump(to_dict(cfg), sort_keys=False))}</pre>"]
    return body


def _program(argv0: str) -> str:
    """``polytask`` for the command line (its script, or ``python -m polytask.cli``), else the script."""
    return "polytask" if Path(argv0).name in ("polytask", "cli.py") else argv0


def data_table(train_sizes: dict, preds: dict) -> str:
    """Examples per task and split, and the dev label counts of label-set tasks."""
    rows = []
    for task in sorted(set(train_sizes) | set(preds["dev"]) | set(preds["test"])):
        refs = preds["dev"].get(task, {}).get("references") or []
        counts = Counter(r for r in refs if isinstance(r, str))
        rows.append([task, train_sizes.get(task), len(refs) or None,
                     len(preds["test"].get(task, {}).get("references") or []) or None,
                     ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))])
    return table(["task", "train", "dev", "test", "dev labels"], rows)


def classification_details(predictions: list, references: list, inputs: list | None = None,
                           show: int = 5) -> list[str]:
    """A confusion matrix (rows: true label, columns: predicted) and the first ``show`` errors,
    with their inputs when the saved predictions carry them (runs trained before they did: not)."""
    from sklearn.metrics import confusion_matrix

    labels = sorted(set(references) | set(predictions), key=str)
    matrix = confusion_matrix(references, predictions, labels=labels)
    rows = [[f"true {label}", *map(int, row)] for label, row in zip(labels, matrix)]
    errors = [[i, *([inputs[i]] if inputs else []), ref, pred]
              for i, (ref, pred) in enumerate(zip(references, predictions)) if ref != pred]
    out = [table(["", *(f"predicted {label}" for label in labels)], rows)]
    if errors:
        out += [f"<p class=\"note\">{len(errors)} of {len(references)} dev examples wrong; the first "
                f"{min(show, len(errors))} (by position in the dev file):</p>",
                table(["dev example", *(["input"] if inputs else []), "true", "predicted"], errors[:show])]
    return out


def sample_grid(got: dict, column: str, show: int = 24, side: int = 96) -> list[str]:
    """Thumbnails of the first ``show`` dev images, errors first (red), each with its predicted
    and true label; an ``.npz`` row (``file:row``) is read from the file's ``column`` array."""
    preds, refs, inputs = got["predictions"], got["references"], got["inputs"]
    numeric = all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in refs)
    if numeric:  # regression: no right or wrong, the largest errors first
        wrong, bad = [], set()
        picked = sorted(range(len(refs)), key=lambda i: -abs(preds[i] - refs[i]))[:show]
    else:
        wrong = [i for i, (p, r) in enumerate(zip(preds, refs)) if _label(p) != _label(r)]
        bad = set(wrong)
        picked = wrong[:show] + [i for i in range(len(refs)) if i not in bad][: max(0, show - len(wrong))]
    arrays: dict[str, object] = {}
    figures = []
    for i in picked:
        png = thumbnail(inputs[i], column, side, arrays)
        img = f"<img alt=\"{html.escape(inputs[i])}\" src=\"{data_uri(png)}\">" if png else "<em>(image not found)</em>"
        figures.append(f"<figure class=\"{'err' if i in bad else 'num' if numeric else 'ok'}\" title=\"{html.escape(inputs[i])}\">{img}"
                       f"<figcaption>#{i}: predicted <b>{html.escape(_label(preds[i]))}</b><br>"
                       f"true {html.escape(_label(refs[i]))}</figcaption></figure>")
    note = (f"<p class=\"note\">{len(wrong)} of {len(refs)} dev images wrong; {len(picked)} shown, errors first "
            f"(red border), then correct ones (green), each by position in the dev data.</p>" if not numeric else
            f"<p class=\"note\">The {len(picked)} dev images of {len(refs)} with the largest |predicted - true|, "
            f"largest first.</p>")
    return [note, f"<div class=\"grid\">{''.join(figures)}</div>"]


def _label(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, sorted(value, key=str))) or "(none)"
    return str(value)


def thumbnail(source: str, column: str, side: int, arrays: dict) -> bytes | None:
    """A PNG of at most ``side`` x ``side`` of an image file, or of row ``n`` of ``file.npz:n``
    (``arrays`` caches each file's array); None when it cannot be read any more."""
    import numpy as np
    from PIL import Image

    row = re.fullmatch(r"(.+\.npz):(\d+)", source)
    try:
        if row:
            if row[1] not in arrays:
                with np.load(row[1], allow_pickle=False) as z:
                    arrays[row[1]] = z[column]
            img = Image.fromarray(arrays[row[1]][int(row[2]) - 1]).convert("RGB")
        else:
            with Image.open(source) as opened:
                img = opened.convert("RGB")
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    except (OSError, KeyError, ValueError, IndexError):
        return None


def affinity_section(affinity: dict, pngs: dict[str, bytes]) -> list[str]:
    """``polytask affinity``'s result (docs/affinity.md): heatmaps, groupings, best partners."""
    body = ["<h2 id=\"affinity\">Task affinity</h2>",
            f"<p class=\"note\">TAG lookahead affinity Z[i -&gt; j] (row: task stepped on; column: task whose loss "
            f"changed) and gradient cosines, averaged over {_cell(affinity['cost'].get('lookaheads'))} lookaheads "
            f"(every {_cell(affinity.get('every'))} steps).</p>"]
    for kind, png in pngs.items():
        body.append(f"<img alt=\"{html.escape(kind)} affinity heatmap\" src=\"{data_uri(png)}\">")
    rows = [[g["groups"], " | ".join(" + ".join(grp) for grp in g["grouping"]), g["score"], g["search"]]
            for g in affinity.get("groupings", [])]
    body.append(table(["groups", "grouping", "score", "search"], rows))
    partners = [[t, p["partner"], p["affinity"]] for t, p in affinity.get("best_partner", {}).items()]
    body.append(table(["task", "best partner", "Z[partner -> task]"], partners))
    return body


def metrics_tables(summary: dict, events: list[dict]) -> str:
    """The best weights' dev (and test) metrics per task; failing those, the last eval event's."""
    parts = []
    for split in ("dev", "test"):
        results = summary.get(split)
        if not results:
            evals = [e for e in events if e.get("kind") == "eval"]
            results = evals[-1].get("metrics") if split == "dev" and evals else None
        if not results:
            continue
        names = sorted({m for r in results.values() for m in r if isinstance(r.get(m), (int, float))})
        rows = [[task] + [r.get(m) for m in names] for task, r in results.items()]
        parts.append(f"<p><b>{split}</b></p>" + table(["task"] + names, rows))
    return "\n".join(parts) or "<p class=\"note\">No evaluation was logged.</p>"


def weights_table(events: list[dict]) -> str:
    """Effective task weights: first, last, min, max and mean over the logged steps."""
    train = [e for e in events if e.get("kind") == "train"]
    tasks = sorted({t for e in train for t in e.get("weights") or {}})
    if not tasks:
        return "<p class=\"note\">No task weights were logged.</p>"
    rows = []
    for t in tasks:
        w = [e["weights"][t] for e in train if t in (e.get("weights") or {})]
        rows.append([t, w[0], w[-1], min(w), max(w), sum(w) / len(w)])
    note = "" if weights_vary(train) else "<p class=\"note\">The weights did not change (equal weighting).</p>"
    return note + table(["task", "first", "last", "min", "max", "mean"], rows)


# ---------------------------------------------------------------------------------------------
# A compare folder: its report.md as HTML


def write_compare_report(root: str | Path, markdown_name: str = "report.md") -> Path:
    """Write ``report.html`` in a compare folder from its ``report.md`` and the PNGs it shows."""
    root = Path(root)
    text = markdown_to_html((root / markdown_name).read_text(), root)
    title = next((ln[2:].strip().strip("`") for ln in text.splitlines() if ln.startswith("# ")), root.name)
    out = root / REPORT_HTML
    atomic_write(out, page(f"polytask compare: {root.name}" if not title else title, [text]).encode())
    return out


def markdown_to_html(md: str, base: Path) -> str:
    """The Markdown that ``compare`` writes (headings, pipe tables, images, lists, paragraphs) as
    HTML; a local image becomes a data URI (a missing one a note)."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_md_table(block))
            continue
        heading = re.match(r"(#{1,4}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2), base)}</h{level}>")
        elif line.startswith(("- ", "* ")):
            out.append(f"<ul><li>{_inline(line[2:], base)}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line, base)}</p>")
        i += 1
    return "\n".join(out).replace("</ul>\n<ul>", "\n")


def _md_table(block: list[str]) -> str:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in block]
    rows = [r for r in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
    head = "".join(f"<th>{_inline(c, None)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c, None)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str, base: Path | None) -> str:
    def image(m: re.Match) -> str:
        path = (base / m.group(2)) if base is not None else None
        if path is None or not path.is_file():
            return f"<em>(image {html.escape(m.group(2))} not found)</em>"
        return f"<img alt=\"{html.escape(m.group(1))}\" src=\"{data_uri(path.read_bytes())}\">"

    parts = re.split(r"(!\[[^\]]*\]\([^)]+\))", text)
    out = []
    for part in parts:
        m = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", part)
        if m:
            out.append(image(m))
            continue
        s = html.escape(part)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        out.append(s)
    return "".join(out)
