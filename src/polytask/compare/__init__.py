"""``polytask compare``: did multi-task learning help?

From one YAML config, train

* one **single-task** model per task (the same backbone, hyper-parameters, budget rule and
  early-stopping rule; plain fine-tuning: hard sharing with one head, unweighted loss), and
* every **multi-task** variant listed under ``compare.methods`` (the base config with another
  weighting, sampling, architecture or overrides),

each for every seed in ``compare.seeds``; then score them against each other on dev and test,
with Delta-m (Maninis, Radosavovic & Kokkinos, "Attentive Single-Tasking of Multiple Tasks",
CVPR 2019; the form used by Vandenhende et al., "Multi-Task Learning for Dense Prediction
Tasks: A Survey", TPAMI 2021):

    Delta-m = 100 / T * sum_t s_t (M_mtl,t - M_single,t) / |M_single,t|,   s_t = +1 / -1

and with the costs: trainable parameters, wall time, training throughput, peak memory, and the
cost of serving every task (one multi-task model vs T single-task models).

Layout of the compare folder ``output_dir/name``::

    compare.yaml                  the resolved base config (with its compare section)
    plan.json                     every sub-run with its budget
    single/<task>/seed<S>/        a single-task run folder (as written by ``polytask train``)
    mtl/<method>/seed<S>/         a multi-task run folder
    inference.json                the serving-cost measurements (cached)
    results.json                  every number of the report
    report.md, *.png              the report

The parts:

* :mod:`~polytask.compare.prepared` -- the comparison's data, read once and passed around;
* :mod:`~polytask.compare.plan` -- sub-runs, budgets (``converge``, ``examples`` or ``steps``), the
  tuning grid's points, ``--seeds``, config checks;
* :mod:`~polytask.compare.run` -- the whole command: plan, train what is missing, report;
* :mod:`~polytask.compare.subrun` -- one sub-run trained (isolated, resumable), measured;
* :mod:`~polytask.compare.executors` -- where sub-runs train: ``local`` processes (``jobs`` at
  once) or ``ray`` tasks on a cluster;
* :mod:`~polytask.compare.grid` -- each model's grid point (or search trial), chosen on dev;
* :mod:`~polytask.compare.search` -- ``compare.search``: Optuna TPE trials per model and seed;
* :mod:`~polytask.compare.chance` -- chance levels, chance-corrected scores, near-chance baselines;
* :mod:`~polytask.compare.accounting` -- examples and tokens seen (replayed), throughput;
* :mod:`~polytask.compare.serving` -- the measured serving cost;
* :mod:`~polytask.compare.results` -- every number of the report (``results.json``), with the
  arithmetic in :mod:`~polytask.compare.stats` and the bootstrap intervals and verdict in
  :mod:`~polytask.compare.uncertainty`;
* :mod:`~polytask.compare.report`, :mod:`~polytask.compare.report_checks` and
  :mod:`~polytask.compare.plots` -- ``report.md`` and plots.

Checkpoints are selected on dev only; test is evaluated once, at the end. Rerunning the same
command trains only what is missing (see :mod:`polytask.compare.run`).
"""

from polytask.compare.accounting import account, replay, steps_done, throughput, train_lengths
from polytask.compare.chance import chance_level, corrected, gain, near_chance
from polytask.compare.grid import choose
from polytask.compare.plan import (SINGLE, Plan, SubRun, check_finished, config_differences, exposure,
                                   default_patience, grid_points, n_evaluations, plan_compare, plan_json, weighting_class,
                                   with_overrides, with_seeds)
from polytask.compare.prepared import Prepared
from polytask.compare.plots import write_report
from polytask.compare.report import best_on_dev, format_table, render_markdown, verdicts
from polytask.compare.results import collect, convergence, ending, environment, positive_labels
from polytask.compare.stats import delta_m_defined, mean_std, relative_changes
from polytask.compare.uncertainty import bootstrap, percentile_interval, verdict
from polytask.compare.run import run_compare, run_job, run_subrun, train_measured
from polytask.compare.serving import measure_inference

__all__ = [
    "SINGLE", "default_patience", "Plan", "Prepared", "SubRun", "account", "chance_level", "choose", "convergence",
    "corrected", "ending", "gain", "grid_points", "near_chance", "positive_labels", "with_seeds", "best_on_dev", "bootstrap", "percentile_interval", "verdict", "check_finished", "collect",
    "config_differences", "delta_m_defined", "environment", "exposure", "format_table", "mean_std",
    "measure_inference", "n_evaluations", "plan_compare", "plan_json", "relative_changes", "render_markdown",
    "replay", "run_compare", "run_job", "run_subrun", "steps_done", "throughput", "train_lengths",
    "train_measured", "verdicts", "weighting_class", "with_overrides", "write_report",
]
