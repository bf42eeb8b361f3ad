"""The runs of the few-shot curves: the checked set-up and every (K, seed) run from one start point.

Used by :func:`polytask.adapt.curves.learning_curves` in this process, and by its Ray tasks
(:mod:`polytask.adapt.remote`), so both run the same code.
"""

from __future__ import annotations

from pathlib import Path

from polytask.adapt.core import head_cache, head_learner, model_learner, prepare_new, refs_of, start_backbone
from polytask.adapt.fit import evaluate_split, fit
from polytask.adapt.shots import k_shot, stratifies
from polytask.adapt.spec import AdaptError, check_applies, check_new_name, check_source, check_tune, new_task_config
from polytask.backbones.layout import hidden_size
from polytask.predict import Predictor


def curve_setup(run_dir: str | Path, task: dict | str | Path, shots: list[int], seeds: int, tune: str,
                overrides: list[str] | None):
    """The checked source run, the new task's config, the loaded source, its data and every (K, seed) draw."""
    check_tune(tune)
    run, src_cfg = check_source(run_dir)
    new = new_task_config(src_cfg, task, overrides)
    check_new_name(src_cfg, new)
    check_applies(tune, new)
    if seeds < 1:
        raise AdaptError(f"--seeds: expected a positive number, got {seeds}")
    source = Predictor.load(run.path)
    td = prepare_new(new.cfg, source.tokenizer)
    labels = [td.task.reference(e) for e in td.examples["train"]]
    draws = {(k, s): k_shot(labels, k, new.cfg.seed + s, stratifies(td.task), new.name)
             for k in sorted(set(shots)) for s in range(seeds)}
    return run, new, source, td, draws


def start_runs(start: str, source: Predictor, new, td, draws: dict, tune: str, progress: bool, bar) -> list[dict]:
    """Every (K, seed) run from one start point (its encoder states cached once for ``head``)."""
    t, pad = new.cfg.train, source.pad_id
    backbone = start_backbone(start, source.model, new.cfg)
    cache = None
    if tune == "head":
        needed = sorted({i for idx in draws.values() for i in idx})
        cache = head_cache(backbone, td, needed, pad, t.eval_batch_size, progress)
    refs, out = refs_of(td), []
    for (k, s), idx in draws.items():
        seed = new.cfg.seed + s
        if cache is not None:
            learner = head_learner(td, hidden_size(backbone), cache, pad, seed)
        else:
            learner = model_learner(tune, backbone, td, {}, new.lora, pad, seed)
        result = fit(learner, td.task, idx, refs, t, seed)
        row = {"start": start, "k": k, "seed": seed, "best_step": result["best_step"], "seconds": result["seconds"]}
        for split in ("dev", "test"):
            metrics = evaluate_split(learner, td.task, refs, split, t.eval_batch_size)
            row[split] = None if metrics is None else metrics[td.task.main_metric]
            row[f"{split}_metrics"] = metrics  # every metric of the task, for a closer look
        out.append(row)
        bar.update(1)
    del cache, backbone
    return out
