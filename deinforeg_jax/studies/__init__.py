"""Studies: grids of runs over rules x datasets x label-noise rates x seeds, under a budget.

A grid config (``launch/configs/experiments/*.py``) holds ``base`` (an ordinary run config:
backbone, optimizer and epoch budget, the same for every cell), the axes ``rules``,
``datasets``, ``noise_rates`` (percent, ``noise_kind`` noise; 0 = clean) and ``seeds``,
optional per-dataset and per-rule overrides (nested dicts of run-config fields), ``metric`` (the
summary field tabulated) and ``budget_minutes`` (no new cell starts once the grid has run that
long; 0 = no limit).  Optional: ``plateau_epochs`` / ``plateau_tol`` (a cell has *converged*
when its best-exit test accuracy in the last ``plateau_epochs`` epochs beat the best of all
earlier epochs by at most ``plateau_tol``; the table counts converged cells), ``compare_to`` (a
rule, or several joined by commas: win / tie / loss against every other rule by Welch's
two-sided t-test over seeds, p < 0.05) and ``extra_metrics`` (more summary fields, each
tabulated and compared like ``metric``).

``runner.run_grid(grid, root)`` is the one call.  At the end ``<root>/table.md`` holds
mean ± std over seeds per (dataset, noise rate, rule), and PNG plots lie beside it: accuracy vs
noise rate, per-exit test accuracy over training, learning curves (best exit per epoch,
mean ± std over seeds), and (with ``base.train.log_grad_norms``) gradient norm vs depth.  Each
summary carries its per-epoch curves, so ``report_only`` rebuilds table and plots from
committed summaries alone (no workdirs needed), and a grid can be extended later.

For ``--executor=ray``: ``cell_resources`` (one cell's Ray resources, ``"GPU=1"``); for the
``--dry_run`` cost: ``sustained_tflops`` (the TFLOP/s assumed per device).

Modules: ``grid`` (cells, their names, workdirs and configs), ``executors`` (the interface and
the local executor), ``ray_executor`` (cells as Ray tasks on a cluster), ``runner``
(``run_grid``: resume, budget, stop, failed cells), ``report`` (summaries, table, plots),
``welch`` (win / tie / loss), ``grid_cost`` (device-hours of the unfinished cells).
"""
