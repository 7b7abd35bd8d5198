"""The bench's record as the README shows it: markdown tables, ratios side by side."""

from __future__ import annotations


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def step_table(record: dict) -> str:
    reference = {s["precision"]: s for s in record["steps"] if s["step"] == "reference"}
    fp32 = reference.get("fp32")
    rows = []
    for s in record["steps"]:
        same = reference[s["precision"]]
        rows.append([s["step"], s["precision"], f"{s['captions_per_s']:.1f}",
                     f"{s['captions_per_s'] / same['captions_per_s']:.2f}×",
                     f"{s['captions_per_s'] / fp32['captions_per_s']:.2f}×" if fp32 else "—",
                     f"{s['flop_per_step'] / 1e9:.0f}", f"{s['flop_per_s'] / 1e9:.0f}", f"{s['mfu']:.1%}",
                     f"{s['gradient_mb']:.0f}", f"{s['optimizer_mb']:.0f}",
                     "—" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"])
    return _table(["step", "precision", "captions/s", "× reference (same precision)", "× reference fp32",
                   "GFLOP/step", "GFLOP/s", "MFU", "gradient MB", "optimizer MB", "peak MB"], rows)


def vocabulary_table(record: dict) -> str:
    first = {v["gradient"]: v for v in record["vocabulary"] if v["rows"] == record["vocabulary"][0]["rows"]}
    rows = [[f"{v['rows']:,}", v["gradient"], f"{v['seconds']:.3f}", f"{v['seconds'] / first[v['gradient']]['seconds']:.2f}×",
             f"{v['embedding_mb']:.0f}", f"{v['gradient_mb']:.1f}", f"{v['optimizer_mb']:.1f}"]
            for v in record["vocabulary"]]
    return _table(["embedding rows", "gradient", "s/step", f"× {record['vocabulary'][0]['rows']:,} rows",
                   "embedding MB", "gradient MB", "optimizer MB"], rows)


def projection_table(record: dict) -> str:
    e, p = record["evaluation"], record["projection"]
    rows = [["evaluation throughput", f"{e['captions_per_s']:.0f} captions/s ({e['precision']})"],
            [f"36×36 matrix at XM3600 size ({e['language_evaluations']} language evaluations, full passes)",
             f"{e['xm3600_matrix_s'] / 60:.1f} min"],
            [f"36-task COCO-36 run ({p['precision']}): training, 3 epochs × 566,747 captions per task",
             f"{p['train_h']:.1f} h"],
            ["… validation after every epoch, test (COCO-36 + XM3600) after every task", f"{p['validation_h'] + p['test_h']:.1f} h"],
            ["… in all", f"{p['total_h']:.1f} h"]]
    return _table(["projection", "value"], rows)


def bench_tables(record: dict) -> str:
    """The header line and the three tables of a bench record."""
    check = record["loss_check"]
    header = (f"{record['device']}, torch {record['torch']}: {record['arch']} text tower, batch {record['batch_size']}, "
              f"{record['mean_tokens']:.1f} tokens per caption, {record['vocab_rows']:,} embedding rows "
              f"({record['task_rows']:,} the task's); mean of {record['timed_steps']} steps after a warm-up; "
              f"same loss on the same batch (fp32): relative difference {check['relative_difference']:.1e}")
    return "\n\n".join([header, step_table(record), vocabulary_table(record), projection_table(record)])
