"""The run report: CL tables and plots (matplotlib, Agg) from the ``results.jsonl`` files of one or more runs.

A run directory holds one sub-folder per method, each with ``config.yaml`` and ``results.jsonl`` (one JSON
line per completed language task, in task order). ``build_report`` writes ``report.md`` and ``plots/*.png``;
``cll-ray report RUN_DIR... [--out DIR]`` (``main``) does the same from the command line.

Its parts: ``results`` reads the rows, ``tables`` formats them, ``plots`` draws them, ``builder`` writes
report.md; the names below are the package's public ones.
"""

from cll_ray.metrics import CL_KEYS
from cll_ray.report.builder import PLOTS_DIR, REPORT_FILE, add_arguments, build_report, main, run
from cll_ray.report.plots import (
    CURVE_KEYS,
    CURVE_METRICS,
    HEATMAP_METRICS,
    figure_to_rgb,
    heatmap_figure,
    metric_label,
    plot_curves,
    plot_heatmap,
)
from cll_ray.report.results import (
    CONFIG_FILE,
    ORDERS_DIR,
    RESULTS_FILE,
    accuracy_matrix,
    collect_results,
    copy_results,
    evaluated_languages,
    expand_orders,
    load_results,
    method_name,
    runs_by_method,
    task_languages,
    task_order,
)
from cll_ray.report.tables import (
    ACROSS_KEYS,
    ACROSS_METRICS,
    MISSING,
    SERIES_METRICS,
    TABLE_METRICS,
    across_runs_table,
    final_table,
    growth_table,
    load_paper,
    results_table,
    series_table,
)

__all__ = [
    "ACROSS_KEYS", "ACROSS_METRICS", "CL_KEYS", "CONFIG_FILE", "CURVE_KEYS", "CURVE_METRICS", "HEATMAP_METRICS",
    "MISSING", "ORDERS_DIR", "PLOTS_DIR", "REPORT_FILE", "RESULTS_FILE", "SERIES_METRICS", "TABLE_METRICS",
    "accuracy_matrix", "across_runs_table", "add_arguments", "build_report", "collect_results", "copy_results",
    "evaluated_languages", "expand_orders", "figure_to_rgb", "final_table", "growth_table", "heatmap_figure",
    "load_paper", "load_results", "main", "method_name", "metric_label", "plot_curves", "plot_heatmap",
    "results_table", "run", "runs_by_method", "series_table", "task_languages", "task_order",
]
