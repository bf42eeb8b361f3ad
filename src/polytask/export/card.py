"""The model card (``README.md``) of an exported run: tasks, per-task dev/test metrics, the
training config, and Delta-m against single-task models when the run came from ``compare``."""

from __future__ import annotations

import json
import keyword
import math
from pathlib import Path

import yaml

from polytask.config import to_dict

PIPELINES = {"classification": "text-classification", "regression": "text-classification",
             "tagging": "token-classification"}


def model_card(pred, manifest: dict) -> str:
    """Markdown with a Hugging Face metadata header, for the export folder of ``pred``'s run."""
    cfg = pred.cfg
    summary = _summary(pred)
    kind = manifest.get("kind", "hard")
    peft = kind == "adapters/lora" or (kind == "causal_lm" and manifest.get("peft") != "none")
    library = "peft" if peft else "transformers"
    lines = ["---", f"library_name: {library}", "tags:", "- polytask", "- multi-task", "---", "",
             f"# {cfg.name}", "",
             f"A multi-task model trained with [polytask](https://pypi.org/project/polytask/) "
             f"(architecture `{cfg.architecture.name}`, weighting `{cfg.weighting.name}`) on top of "
             f"`{cfg.model.backbone}`. Best step {summary.get('best_step', '?')} of {summary.get('steps', '?')}.",
             "", "## Tasks", "",
             "| task | type | labels | main metric | dev | test | folder |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, task in pred.tasks.items():
        labels = ", ".join(getattr(task, "labels", []) or []) or "-"
        metric = task.main_metric
        dev, test = (_metric(summary, split, name, metric) for split in ("dev", "test"))
        folder = manifest["tasks"].get(name)
        how = manifest.get("task_format") or PIPELINES.get(task.type_name, "")
        where = f"`{folder}` ({how})" if folder else "not exported: " + manifest[
            "not_exported"].get(name, "")
        lines.append(f"| {name} | {task.type_name} | {labels} | {metric} | {dev} | {test} | {where} |")
    lines += ["", *_delta_m_lines(pred.run_dir, cfg.name), *_usage(manifest),
              "## Training config", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _summary(pred) -> dict:
    try:
        return pred.run.read_summary()
    except Exception:  # a run stopped before its test evaluation: the card says "?"
        return {}


def _metric(summary: dict, split: str, task: str, metric: str) -> str:
    value = summary.get(split, {}).get(task, {}).get(metric)
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _delta_m_lines(run_dir: Path, name: str) -> list[str]:
    """Delta-m of this run's method from the compare folder above it (``<root>/mtl/<method>/seed<S>``)."""
    run_dir = Path(run_dir).resolve()
    if len(run_dir.parents) < 3 or run_dir.parents[1].name != "mtl":
        return []
    results = run_dir.parents[2] / "results.json"
    try:
        delta = json.loads(results.read_text())["delta_m"][run_dir.parent.name]
    except (OSError, ValueError, KeyError):
        return []
    lines = ["## Delta-m against single-task models (from `polytask compare`)", ""]
    for split, d in delta.items():
        lines.append(f"- {split}: {d['mean']:+.2f}% (std {d['std']:.2f} over {d['n']} seed(s))")
    return lines + [""]


def _usage(manifest: dict) -> list[str]:
    kind = manifest.get("kind", "hard")
    if kind == "causal_lm":
        return _usage_causal_lm(manifest)
    if kind == "vision":
        return manifest["usage"]  # written by polytask.export.vision
    if kind.startswith("adapters"):
        return ["## Use", "", "```python", "from peft import PeftModel", "from transformers import AutoModel", "",
                'encoder = AutoModel.from_pretrained("encoder")',
                *(f'{name} = PeftModel.from_pretrained(AutoModel.from_pretrained("encoder"), "{folder}")'
                  for name, folder in manifest["tasks"].items()), "```", "",
                "Each task folder also holds the task head (`head.safetensors`: polytask's pool -> linear head) "
                "and `polytask_adapter.json` (labels, task config); see polytask's docs/export.md.", ""]
    lines = ["## Use", "", "Run from this folder (or set `root` to it; after `--push-to-hub`, "
             "`root = Path(huggingface_hub.snapshot_download(REPO))`):", "", "```python",
             "from pathlib import Path", "", "from transformers import AutoModel, pipeline", "",
             'root = Path(".")  # this folder',
             'encoder = AutoModel.from_pretrained(root / "encoder")']
    for name, folder in manifest["tasks"].items():
        lines.append(f'{_python_name(name)} = {_pipeline_call(manifest, folder)}')
    lines += ["```", "", "Tagging tasks use `aggregation_strategy=\"first\"`: one tag per word, from its first "
              "word piece, as polytask tags. Regression tasks use `function_to_apply=\"none\"`: the score is "
              "the raw output.", "", "Sequence classifiers: the pooler (`dense + tanh`) is set to "
              f"`{manifest['pooler_scale']:g} * I` and the classifier scaled back, so the logits equal polytask's "
              "(see polytask's docs/export.md); fine-tuning them further starts from that tiny pooler.", ""]
    return lines


def _pipeline_call(manifest: dict, folder: str) -> str:
    """The ``pipeline(...)`` of one exported task folder: the pipeline named (a local folder given
    without one is looked up on the Hub), word-level tags for tagging, raw scores for regression."""
    model = f'model=str(root / "{folder}")'
    if folder in manifest.get("tagging", []):
        return f'pipeline("token-classification", {model}, aggregation_strategy="first")'
    extra = ', function_to_apply="none"' if folder in manifest.get("regression", []) else ""
    return f'pipeline("text-classification", {model}{extra})'


def _python_name(task: str) -> str:
    """A task name as a Python variable name (``sst-2`` -> ``sst_2``, ``2nd`` -> ``task_2nd``)."""
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in task)
    return name if name.isidentifier() and not keyword.iskeyword(name) else f"task_{name}"


def _usage_causal_lm(manifest: dict) -> list[str]:
    base = manifest["base"]
    gguf = f', gguf_file="{base["gguf_file"]}"' if base.get("gguf_file") else ""
    lines = ["## Use", "", "```python", "import json", "from peft import PeftModel",
             "from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig", "",
             f'base = AutoModelForCausalLM.from_pretrained("{base["name_or_path"]}"{gguf})']
    folder = next(iter(manifest["tasks"].values()))  # one task shows the pattern; every task folder is alike
    model = f'PeftModel.from_pretrained(base, "{folder}")' if manifest["peft"] != "none" else "base"
    lines += [f'spec = json.load(open("{folder}/polytask_task.json"))',
              f'tok, gen = AutoTokenizer.from_pretrained("{folder}"), GenerationConfig.from_pretrained("{folder}")',
              'record = {field: "..." for field in spec["fields"]}  # the input, by the prompt\'s field names',
              'prompt = spec["prompt_prefix"] + spec["prompt"].format(**record) + spec["prompt_suffix"]',
              'batch = tok(prompt, return_tensors="pt", add_special_tokens=spec["add_special_tokens"])',
              f"out = {model}.generate(**batch, generation_config=gen)",
              'answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()']
    return lines + ["```", "", "Every task folder holds the same files; see polytask's docs/llm.md (Export).", ""]
