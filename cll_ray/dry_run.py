"""`cll-ray run --dry-run`: what a run would do, without training anything or starting Ray.

It resolves each method's config, the task order(s), the vocabulary each task adds (the same tokenizer plan the
driver makes: the per-language BPEs are trained here if the data home's tokenizer cache lacks them, and reused
by the run) and the resources each method's Trainer asks Ray for.
"""

from __future__ import annotations

from pathlib import Path

from cll_ray.config import ExperimentConfig


def _columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def config_lines(configs: dict[str, ExperimentConfig]) -> list[str]:
    """Every resolved key: one value where the methods agree, each method's side by side where they differ."""
    from cll_ray.report.tables import config_rows

    shared, differing = config_rows({name: cfg.to_dict() for name, cfg in configs.items()})
    lines = ["config (resolved):", *_columns(shared)]
    if differing:
        lines += ["differing by method:", *_columns([["key", *configs], *differing])]
    return lines


def resource_lines(configs: dict[str, ExperimentConfig]) -> list[str]:
    """What each method's Trainer asks Ray for (its workers' CPUs and GPUs), methods side by side."""
    rows = [["", *configs]]
    workers, cpus, gpus, total = ["workers"], ["CPUs per worker"], ["GPUs per worker"], ["total"]
    for cfg in configs.values():
        run = cfg.run
        n = max(1, run.num_workers)  # local mode (0 workers) trains in one process
        workers.append(str(run.num_workers) + (" (local mode)" if run.num_workers == 0 else ""))
        cpus.append(f"{run.cpus_per_worker:g}")
        gpus.append("1" if run.use_gpu else "0")
        total.append(f"{n * run.cpus_per_worker:g} CPU" + (f", {n} GPU" if run.use_gpu else ""))
    rows += [workers, cpus, gpus, total]
    return ["Ray resources per method (each method is one Ray Train Trainer; as many run side by side as the "
            "cluster's CPUs/GPUs hold, the others wait):", *_columns(rows)]


def growth_lines(configs: dict[str, ExperimentConfig], orders: list[list[str]], dataset: Path, base,
                 ) -> list[str]:
    """Each task's vocabulary before and after, per method, from the tokenizer plan the driver makes."""
    from cll_ray.continual import ContinualLearner
    from cll_ray.methods import build_method

    plans: dict[str, list] = {}  # tokenizer family -> growth per order (methods of one family share the plan)
    per_method = {}
    for name, cfg in configs.items():
        family = build_method(cfg.method).tokenizer_family
        if family not in plans:
            # planning reads captions only: no teacher features needed
            learner = ContinualLearner(base, None, dataset, cfg)
            plans[family] = [learner.plan_growth(list(order))[1] for order in orders]
        per_method[name] = (family, plans[family])
    lines = []
    for k, order in enumerate(orders):
        title = "vocabulary growth per task" + (f" (order {k})" if len(orders) > 1 else "")
        rows = [["task", "lang", *(f"{n} ({fam})" for n, (fam, _) in per_method.items())]]
        for i, lang in enumerate(order):
            cells = []
            for _, growth in per_method.values():
                g = growth[k][i]
                cells.append(f"{g.old_size} -> {g.new_size} (+{g.new_size - g.old_size})")
            rows.append([str(i + 1), lang, *cells])
        lines += [f"{title}:", *_columns(rows)]
    return lines


def dry_run(configs: dict[str, ExperimentConfig], progress: bool = True) -> str:
    """The dry run's text. May generate the dataset and train the per-language tokenizers (both cached)."""
    from cll_ray.sequence import resolve_base, resolve_dataset
    from cll_ray.sweep import task_orders

    first = next(iter(configs.values()))
    orders = task_orders(first.run.languages, first.run.orders) if first.run.orders > 1 else [list(first.run.languages)]
    dataset = resolve_dataset(first, progress=progress)
    base = resolve_base(first, dataset, progress=progress)
    lines = ["dry run: nothing is trained and Ray is not started", f"methods: {', '.join(configs)}"]
    for k, order in enumerate(orders):
        lines.append(f"task order{f' {k}' if len(orders) > 1 else ''}: {' -> '.join(order)}")
    lines += ["", *config_lines(configs), "", *growth_lines(configs, orders, dataset, base), "",
              *resource_lines(configs)]
    return "\n".join(lines)
