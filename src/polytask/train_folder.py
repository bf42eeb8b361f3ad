"""The run-folder side of training: owning the folder (lock, claim, resolving ``--resume``), the
changes a resume may make (:data:`RESUME_CHANGEABLE`), the files written at the start, and the
checkpoints (saved and restored). The loop itself is :mod:`polytask.train`."""

from __future__ import annotations

import contextlib
import random
from typing import Callable

import numpy as np
import torch

from polytask.config import Config, differences, load_config, to_dict
from polytask.devices import module_device
from polytask.errors import CheckpointError, ConfigError, PolytaskError
from polytask.run_folder import RunFolder
from polytask.sharding import full_optimizer_state, is_sharded, load_optimizer_state, weights_view
from polytask.train_state import LoopState, Session



@contextlib.contextmanager
def own_folder(run: RunFolder, cfg: Config, resume, overwrite: bool, allow_changes: bool):
    """Lock the run folder for this run; a new run claims it, a resumed one checks its best weights
    and its changes. Yields what is left to write (a resume's accepted changes): nothing is written
    for a resume before set-up has built every component (a refusal for code writes nothing)."""
    with run.lock():
        run.remove_stale_temp_files()
        if resume is None:
            claim(run, overwrite)
            yield []
        else:
            run.verify_best()  # what the resumed run loads at its end: checked before it trains
            yield check_resume_changes(cfg, run, allow_changes)


def resolve_run(cfg, overrides: list[str] | None, resume) -> tuple[Config, RunFolder]:
    """The config (a Config, a YAML path, or a resumed run's own) and its run folder."""
    if resume is not None:
        if cfg is not None:
            raise ConfigError(f"give a config file or --resume {resume}, not both: a resumed run "
                              f"continues its own config.yaml (overrides may extend it)")
        run = RunFolder(resume)
        run.check_format()
        return run.read_config(overrides), run
    if cfg is None:
        raise ConfigError("give a config file, or --resume RUN_DIR")
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    return cfg, RunFolder(cfg.run_dir)


def claim(run: RunFolder, overwrite: bool) -> None:
    """A new run starts in a folder with no other run's files (or clears them: ``overwrite``)."""
    if not run.holds_a_run():
        return
    if not overwrite:
        raise PolytaskError(f"{run.path} holds another run; continue it with `polytask train --resume "
                            f"{run.path}`, start it over with --overwrite, or choose another name (name=...)")
    run.clear()


# Settings a resumed run may change: they extend or observe training without changing what it
# has done so far. Anything else (lr, batch size, seed, data, tasks...) would make the resumed
# run a different experiment from its first part.
RESUME_CHANGEABLE = frozenset({
    "name", "output_dir", "data_dir", "train.max_steps", "train.eval_every", "train.early_stopping",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.num_threads",
    "train.cosine_every", "train.eval_batch_size", "train.device", "train.prefetch", "train.workers",
})


def check_resume_changes(cfg: Config, run: RunFolder, allow_changes: bool) -> list[Callable[[], None]]:
    """Compare the config to continue with (config.yaml + overrides) with the one the latest
    checkpoint was trained with; refuse the changes not allowed; returns the writes that save and
    record the accepted ones (called later, once nothing else can refuse the resume)."""
    manifest = run.latest_checkpoint_manifest()  # verified once here, not once per field
    if manifest is None or manifest.get("config") is None:  # no checkpoint (load_checkpoint says so), or an old one
        return []
    changed = differences(manifest["config"], cfg)
    refused = [k for k in changed if not any(k == c or k.startswith(c + ".") for c in RESUME_CHANGEABLE)]
    if refused and not allow_changes:
        raise ConfigError(f"resuming {run.path} with {', '.join(refused)} changed would change the run's "
                          f"trajectory (the checkpoint was trained with other values); resume without these "
                          f"changes, start a new run, or pass --allow-changes to accept them")
    if not changed:
        return []

    def record() -> None:
        run.write_config(cfg)
        run.append_event({"kind": "resume_changes", "step": int(manifest["step"]), "changed": changed,
                          "forced": refused})
        print(f"resuming with changed settings: {', '.join(changed)} (saved in {RunFolder.CONFIG})")

    return [record]


# ---------------------------------------------------------------------------------------------
# The run folder: files written at the start, checkpoints


def save_run_files(cfg: Config, run: RunFolder, tasks, tokenizer, backbone) -> None:
    run.write_marker()
    run.write_config(cfg)
    run.write_vocab({n: t.vocab_state() for n, t in tasks.items()})
    run.save_tokenizer(tokenizer)
    run.save_backbone_config(backbone)


def save_checkpoint(s: Session, state: LoopState) -> None:
    """Written by the main process; with several processes it holds each one's RNG states (every
    other state is the same on all of them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
           "python": random.getstate()}
    if s.device.type == "cuda":  # dropout on a GPU draws from the device's own generator
        rng["cuda"] = torch.cuda.get_rng_state(s.device)
    tree = {"components": {k: v.state_dict() for k, v in s.stateful.items()}, "loop": state.__dict__, "rng": rng}
    if is_sharded(s.model):  # full weights and optimizer state, gathered on the main process
        tree["components"]["optimizer"] = full_optimizer_state(s.model, s.weighting, s.optimizer.optimizer)
    if s.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        tree["processes"] = s.accelerator.num_processes
        tree["rng_by_process"] = gather_object([rng])  # one per process, by rank
    weights = weights_view(s.model, gather=True)
    if s.main:
        s.run.save_checkpoint(state.step, weights, tree, keep=s.cfg.train.keep_checkpoints, config=to_dict(s.cfg))


def restore_checkpoint(run: RunFolder, model: torch.nn.Module, stateful: dict, rank: int = 0,
                       processes: int = 1) -> LoopState:
    """The state of the run's newest checkpoint; process ``rank`` of ``processes`` takes its own RNG."""
    saved = run.load_checkpoint(weights_view(model))
    if saved.get("processes", 1) != processes:
        raise CheckpointError(f"{run.path}: the checkpoint was trained with {saved.get('processes', 1)} process(es), "
                              f"this resume runs {processes}; resume with the same number (each step's global "
                              f"batch and every process's random state depend on it)")
    for key, obj in stateful.items():
        if key == "optimizer" and is_sharded(model):
            load_optimizer_state(model, stateful["weighting"], obj.optimizer, saved["components"][key])
        else:
            obj.load_state_dict(saved["components"][key])
    rng = saved["rng_by_process"][rank] if processes > 1 else saved["rng"]
    torch.set_rng_state(rng["torch"])
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    device = module_device(model)
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return LoopState(**saved["loop"])
