"""A run's events on the driver (no Ray): live TensorBoard with each task once, the console, the compact table,
and the engine's scalars read every few steps without changing what it computes."""

import io
import json

import numpy as np
import pytest
import torch

from cll_ray.config import load_config
from cll_ray.console import TABLE_WIDTH, ProgressConsole, compact_table, result_line
from cll_ray.continual import ContinualLearner
from cll_ray.monitor import RunMonitor, board_dir
from cll_ray.tracking import LEDGER_FILE

ORDER = ["en", "fr", "de"]


def row(t: int, method: str = "cll_clip_teir", aa: float = 40.0) -> dict:
    """A results row of task ``t`` (0-based) of ORDER, scores made up but shaped as the learner's."""
    seen = ORDER[: t + 1]
    scores = {m: [aa - j - t for j in range(t + 1)] for m in ("t2i_r1", "i2t_r1", "r_mean")}
    cl = {m: {"AA": aa - t, "F": float("nan") if t == 0 else 1.0 + t, "Fen": float("nan") if t == 0 else 0.5,
              "plasticity": aa + 1} for m in ("t2i_r1", "i2t_r1")}
    return {"task": t, "lang": ORDER[t], "method": method, "languages": seen, "order": ORDER, "scores": scores,
            "cl": cl, "seconds": 3.0 + t, "growth": {"old_size": 1000 + 100 * t, "new_size": 1100 + 100 * t}}


def events_of(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def accumulator(path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def monitor_for(run_dir, stream):
    cfg = load_config(method="cll_clip_teir")
    return RunMonitor(run_dir, {"cll_clip_teir": cfg.to_dict()}, ProgressConsole(stream, interactive=False,
                                                                                 interval=1e9))


def send(monitor, kind, **fields):
    monitor.handle({"kind": kind, "method": "cll_clip_teir", "seq": "", "tasks": 3, **fields})


def test_each_task_is_written_once_through_restarts_resume_and_lost_events(tmp_path):
    out = io.StringIO()
    run_dir = tmp_path / "run"
    first = monitor_for(run_dir, out)
    send(first, "task_start", task=1, lang="en", epochs=1, steps=20, step=0)
    for step in (10, 20):
        send(first, "step", task=1, lang="en", step=step, task_step=step, scalars={"loss": 1.0 / step, "lr": 1e-3})
    send(first, "epoch", task=1, lang="en", epoch=1, step=20, task_step=20, train_loss=0.07, val_r_mean=50.0)
    send(first, "task", row=row(0))
    send(first, "task", row=row(0))  # a restarted worker group did the task again before its checkpoint
    send(first, "task", row=row(1))
    first.close()  # the driver dies here
    # --resume: a new driver; the restored learner sends what it holds, then task 3's event is lost
    second = monitor_for(run_dir, out)
    send(second, "resumed", rows=[row(0), row(1)])
    second.finish("cll_clip_teir", "", [row(0), row(1), row(2)])  # the last checkpoint's rows
    second.close()

    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines if " task " in line and "T2I R@1" in line] == [
        "cll_clip_teir  task 1/3 en", "cll_clip_teir  task 2/3 fr", "cll_clip_teir  task 3/3 de"]
    assert "\r" not in out.getvalue()
    board = board_dir(run_dir, "cll_clip_teir")
    acc = accumulator(board)
    assert events_of(acc, "eval/en/t2i_r1") == [(1, 40.0), (2, 39.0), (3, 38.0)]
    assert events_of(acc, "eval/de/t2i_r1") == [(3, 36.0)]
    assert [step for step, _ in events_of(acc, "cl/t2i_r1/AA")] == [1, 2, 3]
    assert events_of(acc, "train/loss") == [(10, pytest.approx(0.1)), (20, pytest.approx(0.05))]
    assert events_of(acc, "epoch/val_r_mean") == [(20, 50.0)]
    # the heatmap of task 3 was drawn by the second driver from the rows the first one wrote
    assert [im.step for im in acc.Images("cl/accuracy_matrix/t2i_r1")] == [1, 2, 3]
    assert sum(1 for tag in acc.Tags()["tensors"] if tag.startswith("config")) == 1
    assert json.loads((board / LEDGER_FILE).read_text()) == {"tasks": [0, 1, 2], "hparams": True, "config": True}
    hp = accumulator(board / "hparams")
    assert events_of(hp, "final/t2i_r1/AA") == [(0, 38.0)]


def test_a_broken_ledger_is_named(tmp_path):
    board = board_dir(tmp_path, "cll_clip_teir")
    board.mkdir(parents=True)
    (board / LEDGER_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match=f"{LEDGER_FILE}: not a TensorBoard ledger"):
        monitor_for(tmp_path, io.StringIO()).board("cll_clip_teir")


def test_progress_lines_off_a_terminal_are_plain_lines():
    out = io.StringIO()
    console = ProgressConsole(out, interactive=False, interval=1e9)
    state = console.state("cll_clip_teir")
    state.update({"kind": "task_start", "task": 2, "tasks": 4, "lang": "fr", "epochs": 3, "steps": 30, "step": 40})
    state.update({"kind": "step", "task": 2, "tasks": 4, "lang": "fr", "task_step": 15, "scalars": {"loss": 0.5}})
    console.refresh()
    assert out.getvalue() == ""  # the interval has not passed
    console.refresh(force=True)
    line = out.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert "task 2/4 fr" in line and "step 15/30" in line and "loss 0.5000" in line and "ETA" in line
    assert state.fraction() == pytest.approx((1 + 0.5) / 4)


def test_result_line_labels_every_language():
    line = result_line("cll_clip", row(2))
    assert line.startswith("cll_clip  task 3/3 de: T2I R@1 en 38.0 fr 37.0 de 36.0 | T2I AA 38.0 F 3.0")
    assert "I2T AA 38.0 F 3.0" in line


def test_compact_table_fits_and_marks_the_best():
    results = {f"o{k}/{m}": [row(0, m, aa), row(1, m, aa), row(2, m, aa)]
               for k in range(2) for m, aa in (("cll_clip", 40.0), ("cll_clip_teir_with_a_long_name", 44.0))}
    results["o1/cll_clip"][-1] = {**row(2, "cll_clip", 42.0)}
    table = compact_table(results)
    lines = table.splitlines()
    assert max(map(len, lines)) <= TABLE_WIDTH
    assert lines[0].split() == ["method", "T2I", "AA", "T2I", "F", "T2I", "Fen", "T2I", "plast.", "I2T", "AA", "I2T",
                                "F", "I2T", "Fen", "I2T", "plast."]
    clip = next(line for line in lines if line.startswith("cll_clip "))
    teir = next(line for line in lines if line.startswith("cll_clip_teir"))
    assert clip.split()[1] == "39.0±1.0"  # mean ± std over the two orders (38 and 40)
    assert teir.split()[1] == "42.0±0.0*"  # the higher AA is best
    # F: the same (3.0) for both, so both are marked
    assert clip.split()[2] == "3.0±0.0*" and teir.split()[2] == "3.0±0.0*"
    many = {f"method_with_a_very_long_name_number_{k}": [row(0)] for k in range(12)}
    assert max(map(len, compact_table(many).splitlines())) <= TABLE_WIDTH


@pytest.mark.usefixtures("one_torch_thread")
def test_reading_scalars_every_few_steps_changes_nothing_it_computes(shipped_base, tiny_features, tiny_synthxm):
    """The engine sums its scalars on the device and reads them every ``log_every`` steps: the same weights and
    epoch means as reading every step, and each read is the mean of the steps it covers."""
    cfg = load_config(method="cll_clip_teir", overrides=["train.batch_size=32", "train.epochs=2", "train.lr=5e-3",
                                                         "model.language_vocab_size=600", "train.precision=fp32"])
    logs, outcomes, weights = {}, {}, {}
    for every in (1, 3):
        learner = ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)
        task = learner.begin_task("en")
        logs[every] = []
        outcomes[every] = learner.train_task(task, steps_per_epoch=5, progress=False, log_every=every,
                                             on_step=lambda step, s, log=logs[every]: log.append((step, s)))
        weights[every] = learner.student.token_embedding.weight.detach().clone()
    torch.testing.assert_close(weights[1], weights[3], rtol=0, atol=0)
    assert outcomes[1].history == outcomes[3].history
    assert [step for step, _ in logs[3]] == [3, 5, 6, 9, 10]  # every 3 steps, and each epoch's end
    per_step = {step: s for step, s in logs[1]}
    for (step, s), start in zip(logs[3], (1, 4, 6, 7, 10), strict=True):
        covered = range(start, step + 1)
        assert s["loss"] == pytest.approx(np.mean([per_step[k]["loss"] for k in covered]), rel=1e-12)
        assert s["lr"] == per_step[step]["lr"]
