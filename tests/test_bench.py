"""`cll-ray bench` on a small tower: the reference-equivalent model computes what cll-ray's student computes, and
a record holds every measurement the README's performance table shows (no speed thresholds: figures only)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from cll_ray.bench.measure import QUICK, Bench, run_bench, synthetic_batch
from cll_ray.bench.reference import pad_to_context, reference_text_model
from cll_ray.bench.table import bench_tables
from cll_ray.cli import main

SMALL = replace(QUICK, arch="cll-synthclip-4L-128", batch_size=8, steps=1, task_rows=500, vocab_rows=(50_000, 60_000),
                eval_captions=16, dense_too=True)


@pytest.fixture(scope="module")
def bench():
    torch.manual_seed(0)
    return Bench(SMALL, torch.device("cpu"), "fp32")


def test_reference_model_pools_what_the_student_pools(bench):
    """transformers' CLIP text model with the student's weights, on ids padded to the context with the tokenizer's
    attention mask: the same sentence embeddings as the student's trimmed, EOS-first-pooled forward."""
    model = reference_text_model(bench.student).eval()
    ids = bench.batch["ids"]
    context = bench.student.context_length
    padded, mask = pad_to_context(ids, context)
    assert padded.shape == (len(ids), context) and int(mask.sum()) == int((ids != 0).sum())
    with torch.no_grad():
        ours, theirs = bench.student(ids), model(input_ids=padded, attention_mask=mask).text_embeds
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_synthetic_captions_are_well_formed():
    batch = synthetic_batch(SMALL, 60_000, 16)
    ids = batch["ids"]
    lengths = (ids != 0).sum(dim=1)
    assert (ids[:, 0] == 49_406).all() and (ids[torch.arange(len(ids)), lengths - 1] == 49_407).all()
    assert int(ids.max()) < 60_000 and batch["teacher"].shape == (8, 16)


def test_the_record_and_its_tables(tmp_path, capsys):
    record = run_bench(SMALL, torch.device("cpu"), progress=lambda line: None)
    assert record["loss_check"]["relative_difference"] < 1e-4
    steps = {(s["step"], s["precision"]) for s in record["steps"]}
    assert ("reference", "fp32") in steps and ("cll-ray", "fp32") in steps
    for s in record["steps"]:
        assert s["captions_per_s"] > 0 and s["flop_per_step"] > 0 and 0 < s["mfu"]
    cll = next(s for s in record["steps"] if s["step"] == "cll-ray")
    ref = next(s for s in record["steps"] if s["step"] == "reference")
    assert cll["flop_per_step"] < ref["flop_per_step"]  # trimmed to the batch's longest caption, not 77
    assert ref["optimizer_mb"] > 10 * cll["optimizer_mb"]  # dense AdamW state over every row vs the task's rows
    sizes = {v["rows"]: v for v in record["vocabulary"] if v["gradient"] == "row-sparse"}
    assert sizes[60_000]["embedding_mb"] > sizes[50_000]["embedding_mb"]
    assert sizes[60_000]["gradient_mb"] < 1 and sizes[60_000]["optimizer_mb"] == sizes[50_000]["optimizer_mb"]
    dense = {v["rows"]: v for v in record["vocabulary"] if v["gradient"] == "dense"}
    assert dense[60_000]["gradient_mb"] == pytest.approx(dense[60_000]["embedding_mb"])
    assert record["evaluation"]["language_evaluations"] == 666 and record["projection"]["total_h"] > 0

    path = tmp_path / "bench.json"
    path.write_text(json.dumps(record))
    assert main(["bench", "--show", str(path)]) == 0
    assert capsys.readouterr().out.strip() == bench_tables(record)


def test_bad_show_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["bench", "--show", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_fp16_steps_skipped_by_the_grad_scaler_do_not_advance_the_schedule():
    """fp16 runs through a GradScaler: a step whose scaled gradient overflows changes no weight and, as in the
    reference, does not advance the warm-up schedule; the scale drops and later steps are taken."""
    bench = Bench(SMALL, torch.device("cpu"), "fp16")
    step, optimizer, _, training = bench.cll_ray_step(bench.student, "fp16")
    assert training.scaler is not None
    training.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows fp16 in the first steps
    weight = bench.student.token_embedding.weight
    before = weight.detach().clone()
    step()
    assert torch.equal(weight, before) and training.scheduler.last_epoch == 0
    for _ in range(60):
        step()
        if training.scheduler.last_epoch:
            break
    assert training.scheduler.last_epoch == 1 and not torch.equal(weight, before)
    assert training.scaler.get_scale() < 2.0**40


def test_fp32_steps_have_no_scaler_and_a_sparse_embedding_gradient(bench):
    step, _, _, training = bench.cll_ray_step(bench.student, "fp32", sparse=True)
    assert training.scaler is None and bench.student.token_embedding.sparse_grad
    step()
    assert bench.student.token_embedding.weight.grad.is_sparse
    training.close()
    assert not bench.student.token_embedding.sparse_grad
