"""``polytask adapt RUN_DIR --task NEW.yaml``: a new task on a trained multi-task model, saved as a run.

What the saved run folder holds, per tuning mode:

- ``head``: the source run's encoder and heads, unchanged, plus the new head; architecture
  ``hard``. The old tasks' predictions are bit-identical to the source run's (same weights,
  same forward pass), and ``predict_all`` still encodes an input once for every task.
- ``lora``: the per-task adapter architecture (``adapters``, kind ``lora``) on the source
  encoder: the new task has its trained LoRA adapter; each old task has an identity adapter
  (PEFT's initialisation: B = 0, so the adapter adds exact zeros) and its unchanged head. The
  old tasks' outputs are bit-identical (tested with ``torch.equal``); the price is one encoder
  pass per task in ``predict_all`` (the encoder pass now depends on the task).
- ``full``: the new task alone, on the fully tuned encoder: the old heads were trained on the
  old encoder, and keeping them on the changed one would silently change their predictions.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

from polytask.adapt.core import head_cache, head_learner, lora_args, prepare_new, refs_of, tuned_model
from polytask.adapt.fit import evaluate_split, fit
from polytask.adapt.learners import ModelLearner
from polytask.adapt.spec import AdaptError, check_applies, NewTask, check_new_name, check_source, check_tune, new_task_config
from polytask.architectures import build_architecture
from polytask.backbones.layout import hidden_size
from polytask.config import ComponentConfig
from polytask.dataset import resolve_path
from polytask.evaluate import macro_score
from polytask.model import MultiTaskModel
from polytask.predict import Predictor
from polytask.run_folder import RunFolder


def adapt(run_dir: str | Path, task: dict | str | Path, out_dir: str | Path, tune: str = "head",
          overrides: list[str] | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Train ``task`` (NEW.yaml or its dict) on the run's encoder; write the adapted run to ``out_dir``."""
    check_tune(tune)
    run, src_cfg = check_source(run_dir)
    new = new_task_config(src_cfg, task, overrides)
    check_new_name(src_cfg, new)
    check_applies(tune, new)
    out = RunFolder(out_dir)
    if out.path.resolve() == run.path.resolve():
        raise AdaptError(f"--out {out.path}: the adapted run needs its own folder (not the source run's)")
    if out.holds_a_run() and not overwrite:
        raise AdaptError(f"--out {out.path} holds another run; choose another folder or pass --overwrite")
    source = Predictor.load(run.path)
    td = prepare_new(new.cfg, source.tokenizer)
    t, seed = new.cfg.train, new.cfg.seed
    train_idx = list(range(len(td.features["train"])))
    if tune == "head":
        backbone = source.model.arch.backbone
        cache = head_cache(backbone, td, train_idx, source.pad_id, t.eval_batch_size, progress)
        learner = head_learner(td, hidden_size(backbone), cache, source.pad_id, seed)
    else:
        model, trainable = tuned_model(tune, source.model.arch.backbone, td, source.tasks if tune == "lora" else {},
                                       new.lora, seed)
        learner = ModelLearner(model, td.task, td.features, source.pad_id, trainable)
    result = fit(learner, td.task, train_idx, refs_of(td), t, seed, progress, desc=f"adapt {new.name} ({tune})")
    model = assemble(tune, source, td, learner)
    summary = summarise(learner, td, result, t.eval_batch_size, run.path, tune)
    with out.lock():
        if overwrite:
            out.clear()
        cfg = saved_config(tune, source.cfg, new)
        tasks = {**source.tasks, new.name: td.task}
        write_run(out, cfg, model, {tc.name: tasks[tc.name] for tc in cfg.tasks}, source.tokenizer, summary)
    print(f"adapted run: {out.path} ({tune}; best step {result['best_step']})", file=sys.stderr)
    return out.path


def assemble(tune: str, source: Predictor, td, learner) -> MultiTaskModel:
    """The model the adapted run saves (see the module docstring)."""
    name = td.task.name
    if tune == "full":
        return learner.model
    if tune == "lora":
        model = learner.model
    else:
        tasks = {**source.tasks, name: td.task}
        model = MultiTaskModel(build_architecture("hard", source.model.arch.backbone, list(tasks)), tasks)
        model.heads[name].load_state_dict(learner.head.state_dict())
    for old in source.tasks:
        model.heads[old].load_state_dict(source.model.heads[old].state_dict())
    return model.eval()


def summarise(learner, td, result: dict, batch_size: int, source: Path, tune: str) -> dict:
    """summary.json of the adapted run: the new task's dev and test metrics at the best step."""
    refs = refs_of(td)
    summary = {"best_step": result["best_step"], "steps": result["steps"], "train_seconds": result["seconds"],
               "adapted_from": str(source), "tune": tune, "task": td.task.name, "predictions": {}}
    for split in ("dev", "test"):
        metrics = evaluate_split(learner, td.task, refs, split, batch_size, summary["predictions"])
        if metrics is not None:
            summary[split] = {td.task.name: metrics}
            summary[f"{split}_macro"] = macro_score(summary[split], {td.task.name: td.task})
    return summary


def saved_config(tune: str, src_cfg, new: NewTask):
    """The adapted run's config: the new task's data paths made absolute (the run keeps the
    source's ``data_dir`` for its old tasks)."""
    tc = copy.deepcopy(new.cfg.tasks[0])
    if tc.data.format not in ("hf", "synthetic"):
        for split in ("train", "dev", "test"):
            if getattr(tc.data, split) is not None:
                setattr(tc.data, split, str(Path(resolve_path(new.cfg, tc, split)).resolve()))
    if tune == "full":
        return replace(new.cfg, tasks=[tc], architecture=ComponentConfig("hard"))
    arch = ComponentConfig("adapters", lora_args(new.lora)) if tune == "lora" else src_cfg.architecture
    return replace(src_cfg, tasks=[*src_cfg.tasks, tc], architecture=arch)


def write_run(out: RunFolder, cfg, model: MultiTaskModel, tasks: dict, tokenizer, summary: dict) -> None:
    """Every file ``Predictor.load`` (and ``polytask serve``) needs, through RunFolder."""
    predictions = summary.pop("predictions")
    out.create()
    out.write_marker()
    out.write_config(cfg)
    out.write_vocab({n: t.vocab_state() for n, t in tasks.items()})
    out.save_tokenizer(tokenizer)
    out.save_backbone_config(model.arch.backbone)
    out.save_best(model, {"step": summary["best_step"], "adapted_from": summary["adapted_from"],
                          "tune": summary["tune"]})
    out.reset_events()
    out.append_event({"kind": "adapt", "step": summary["best_step"], **{k: v for k, v in summary.items()
                                                                         if k in ("task", "tune", "adapted_from")}})
    for split, preds in predictions.items():
        out.write_predictions(split, {summary["task"]: preds})
    out.write_summary(summary)

