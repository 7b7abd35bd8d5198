"""Methods through the learner on a tiny SynthXM: a few steps per task, checking what each method changes."""

import numpy as np
import pytest
import torch

from cll_ray import dataset as ds
from cll_ray.config import load_config, method_presets
from cll_ray.continual import ContinualLearner
from cll_ray.metrics import RETRIEVAL_KEYS
from cll_ray.sequence import run_tasks

TINY = ["train.batch_size=32", "train.epochs=1", "train.lr=5e-3", "model.language_vocab_size=600", "train.precision=fp32"]
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def learner_for(name, shipped_base, tiny_features, tiny_synthxm, *overrides):
    cfg = load_config(method=name, overrides=TINY + list(overrides))
    return ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)


def learn(learner, lang, **kw):
    task = learner.begin_task(lang)
    return task, learner.end_task(task, learner.train_task(task, steps_per_epoch=STEPS, progress=False, **kw))


def params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(now, before):
    """Equal on the rows both have (the embedding only grows)."""
    return torch.equal(now[: before.shape[0]] if now.dim() else now, before)


def changed(before, module):
    return {n for n, p in module.named_parameters() if not same(p.detach(), before[n])}


def test_finetune_all_trains_the_backbone_and_carries_it(shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("finetune_all", shipped_base, tiny_features, tiny_synthxm)
    base_before = params(shipped_base.clip)
    before = params(learner.student)
    learn(learner, "en")
    moved = changed(before, learner.student)
    assert {"positional_embedding", "ln_final.weight", "text_projection"} <= moved
    assert any(n.startswith("transformer.resblocks.0.attn") for n in moved)
    assert not changed(base_before, shipped_base.clip)  # the student trains its own copy of the tower
    fresh = learner_for("finetune_all", shipped_base, tiny_features, tiny_synthxm)
    fresh.load_state_dict(learner.state_dict())
    for n, p in learner.student.named_parameters():
        torch.testing.assert_close(dict(fresh.student.named_parameters())[n], p)
    # CLL-CLIP, by contrast, trains the token embedding only
    plain = learner_for("cll_clip", shipped_base, tiny_features, tiny_synthxm)
    before = params(plain.student)
    learn(plain, "en")
    assert changed(before, plain.student) == {"token_embedding.weight"}


def test_lwf_target_is_the_previous_model_output(shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("lwf_teir", shipped_base, tiny_features, tiny_synthxm, "method.lwf_weight=2.0")
    seen = []
    learn(learner, "en", on_step=lambda step, s: seen.append(set(s)))
    assert all("lwf" not in s for s in seen)  # task 1: no previous model
    task = learner.begin_task("fr")
    m = learner.method
    ids = task.train.ids[:8, :20]
    torch.testing.assert_close(m.target(ids), learner.student(ids).detach())  # the model as the task starts
    start = m.target(ids).clone()
    terms = {"embedding": learner.student(ids) + 1.0}
    assert m.extra_loss_terms({"ids": ids}, terms)["lwf"].item() == pytest.approx(2.0, rel=1e-4)  # 2 · MSE(+1)
    seen.clear()
    learner.train_task(task, steps_per_epoch=STEPS, progress=False, on_step=lambda step, s: seen.append(set(s)))
    assert all("lwf" in s for s in seen)
    torch.testing.assert_close(m.target(ids), start)  # frozen while the student moves
    assert not torch.allclose(learner.student(ids), start)


def test_mla_stages_train_exactly_their_parameters(shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("mla", shipped_base, tiny_features, tiny_synthxm, "method.mla_embedding_dim=24",
                          "method.mla_nlt_epochs=1", "method.mla_le_epochs=1")
    m = learner.method
    before_en = params(learner.student)
    learn(learner, "en")  # English keeps CLIP's path: nothing trains, no acquirers
    assert not changed(before_en, learner.student) and m.languages == []
    log = {"stages": [], "batches": [], "terms": [], "snapshots": []}
    original_begin, original_extend = m.begin_stage, m.extend_batch

    def begin_stage(stage):
        log["stages"].append(stage)
        log["snapshots"].append(params(learner.student))
        original_begin(stage)

    def extend_batch(batch):
        log["batches"].append((log["stages"][-1].name, "image" in batch))
        return original_extend(batch)

    m.begin_stage, m.extend_batch = begin_stage, extend_batch
    task = learner.begin_task("fr")
    outcome = learner.train_task(task, steps_per_epoch=STEPS, progress=False,
                                 on_step=lambda step, s: log["terms"].append((step, s)))
    log["snapshots"].append(params(learner.student))
    names = [s.name for s in log["stages"]]
    assert names == ["nlt", "le"] and [h["stage"] for h in outcome.history] == ["nlt", "le"]
    nlt, le = log["stages"]
    assert (nlt.cross_lingual_weight, nlt.cross_modal_weight, nlt.use_images) == (1.0, 0.0, False)
    assert (le.cross_lingual_weight, le.cross_modal_weight, le.use_images) == (0.0, 1.0, True)
    assert not nlt.learn_temperature and not le.learn_temperature and le.temperature == pytest.approx(0.01)
    # NLT never sees an image; LE does
    assert {has for stage, has in log["batches"] if stage == "nlt"} == {False}
    assert {has for stage, has in log["batches"] if stage == "le"} == {True}
    # NLT: only the distillation term; LE: only the contrastive term
    assert all(s["cross_modal"] == 0 and s["cross_lingual"] > 0 for step, s in log["terms"][:STEPS])
    assert all(s["cross_lingual"] == 0 and s["cross_modal"] > 0 for step, s in log["terms"][STEPS:])
    assert [step for step, _ in log["terms"]] == list(range(1, 2 * STEPS + 1))
    # each stage moved the shared embedding and fr's acquirers, and nothing else
    fr = {n for n in log["snapshots"][-1] if ".banks.fr." in n}
    assert fr
    for before, after_index in ((0, 1), (1, 2)):
        moved = {n for n, p in log["snapshots"][after_index].items()
                 if n in log["snapshots"][before] and not same(p, log["snapshots"][before][n])}
        new = set(log["snapshots"][after_index]) - set(log["snapshots"][before])
        # the authors' default switches: the language's acquirers, the multilingual table, the linear map
        assert (moved | new) - fr == {"token_embedding.weight", "input_map.weight", "input_map.bias"}, moved


@pytest.mark.parametrize("name", ["lora", "mla_adapter"])
def test_earlier_language_modules_survive_later_tasks(name, shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for(name, shipped_base, tiny_features, tiny_synthxm)
    learn(learner, "en")
    en = {n: p for n, p in params(learner.student).items() if ".banks.en." in n}
    learn(learner, "fr")
    now = params(learner.student)
    for n, p in en.items():
        assert torch.equal(now[n], p), n
    fr = {n: p for n, p in now.items() if ".banks.fr." in n}
    assert fr and any(p.abs().sum() > 0 for n, p in fr.items() if n.endswith("b_q") or n.endswith("up.weight"))
    # routing by test language: the same English test captions embed differently under en's and fr's modules
    ids = learner.retrieval_set("en", "test").ids[:16]
    learner.method.activate("en")
    en_emb = learner.student(ids)
    learner.method.activate("fr")
    assert not torch.allclose(learner.student(ids), en_emb)
    learner.evaluate("en")
    assert all(site.active == "en" for site in learner.method.sites)


def test_er_teir_task_tokens_include_memory_captions(shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("er_teir", shipped_base, tiny_features, tiny_synthxm, "method.memory_size=48")
    sizes = []
    _, record = learn(learner, "en", on_step=lambda step, s: sizes.append(len(learner.method.memory)))
    assert sizes == [32, 48]  # updated every step of task 1
    memory_tokens = learner.method.memory_token_sets()["en"]
    fr = learner.begin_task("fr")
    fr_only = learner.tokenizer.token_set(ds.read_captions(tiny_synthxm, "fr").captions)
    assert set(fr.task_tokens) == set(fr_only) | set(memory_tokens)
    assert (fr.row_scale[torch.from_numpy(np.setdiff1d(memory_tokens, learner.tokenizer.special_ids))] > 0).all()
    shared = np.intersect1d(fr_only, memory_tokens)
    counts = dict(zip(fr.task_tokens.tolist(), fr.token_counts.tolist(), strict=True))
    assert shared.size and all(counts[t] == 2 for t in shared)  # counted once per language (§2.2a)
    terms = []
    learner.train_task(fr, steps_per_epoch=STEPS, progress=False, on_step=lambda step, s: terms.append(s))
    assert all("replay" in s for s in terms)


def test_joint_trains_one_task_over_one_vocabulary(shipped_base, tiny_features, tiny_synthxm, tmp_path):
    langs = ["en", "fr", "ru"]
    learner = learner_for("joint", shipped_base, tiny_features, tiny_synthxm, f"run.languages=[{','.join(langs)}]")
    base_size = learner.tokenizer.size
    zero_shot = {k: [0.0] * 3 for k in RETRIEVAL_KEYS}
    run_tasks(learner, langs, zero_shot, steps_for=lambda rows: STEPS, progress=False)
    assert [r["lang"] for r in learner.tasks] == ["joint"]
    growth = learner.tasks[0]["growth"]
    assert growth["lang"] == "joint" and growth["old_size"] == base_size
    assert growth["language_vocab"] <= 600 * 3 and learner.tokenizer.size == growth["new_size"]
    for lang in langs[1:]:  # one vocabulary serves every language: each uses tokens the joint BPE added
        tokens = learner.tokenizer.token_set(ds.read_captions(tiny_synthxm, lang).captions)
        assert (tokens >= base_size).any() and tokens.max() < learner.tokenizer.size
    result = learner.tasks[0]["result"]
    assert result["joint"] and result["languages"] == langs and len(result["scores"]["t2i_r1"]) == 3
    assert result["cl"]["t2i_r1"]["AA"] == pytest.approx(np.mean(result["scores"]["t2i_r1"]))
    assert np.isnan(result["cl"]["t2i_r1"]["F"])
    from cll_ray.report import accuracy_matrix, final_table

    assert accuracy_matrix([result], "t2i_r1").shape == (1, 3)
    assert "| joint | 1 |" in final_table({"joint": [result]})
    # the run's outputs: TensorBoard (with the matrix image) and the report take the single joint row
    from cll_ray.config import save_config
    from cll_ray.report import build_report
    from cll_ray.sequence import write_jsonl
    from cll_ray.tracking import Tracker

    tracker = Tracker(tmp_path / "tb")
    tracker.log_task(result)
    tracker.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    save_config(learner.cfg, tmp_path / "run" / "joint" / "config.yaml")
    write_jsonl(tmp_path / "run" / "joint" / "results.jsonl", [result])
    assert "joint" in build_report([tmp_path / "run"]).read_text()


@pytest.mark.parametrize("name", sorted(method_presets()))
def test_every_preset_is_accepted_by_cll_ray_run(name, shipped_base, tiny_features, tiny_synthxm):
    from cll_ray.cli import build_parser

    args = build_parser().parse_args(["run", "--methods", name, "run.num_workers=0"])
    cfg = load_config(args.config, method=args.methods, overrides=args.overrides + TINY)
    assert cfg.method.name == name and cfg.run.num_workers == 0
    learner = ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)
    task = learner.begin_task(learner.method.tasks(["en", "fr"])[0])
    assert task.row_scale.shape == (learner.tokenizer.size,)
    # every task-1 trains, except MLA's English (CLIP's untouched path)
    assert bool(learner.method.stages(task.spec, cfg.train)) != learner.method.keeps_base_path(task.spec.name)


KINDS = ["cll_clip_teir", "finetune_all", "oewc", "er", "der", "lwf", "lora", "mla_adapter", "mla", "mla_joint", "joint"]


@pytest.mark.parametrize("name", KINDS)
def test_every_method_runs_a_sequence_and_resumes_from_its_checkpoint(name, shipped_base, tiny_features, tiny_synthxm,
                                                                     tmp_path):
    extra = ["method.memory_size=64", "method.mla_nlt_epochs=1", "method.mla_le_epochs=1", "method.mla_embedding_dim=24"]
    learner = learner_for(name, shipped_base, tiny_features, tiny_synthxm, *extra)
    zero_shot = {k: [0.0, 0.0] for k in RETRIEVAL_KEYS}
    run_tasks(learner, ["en", "fr"], zero_shot, steps_for=lambda rows: 1, progress=False)
    rows = [r["result"] for r in learner.tasks]
    assert len(rows[-1]["scores"]["t2i_r1"]) == 2
    # mla's English task trains nothing (English keeps CLIP's path): no loss
    assert all(np.isfinite(r["train_loss"]) for r in rows if not (name == "mla" and r["lang"] == "en"))
    from cll_ray.checkpoint import load_checkpoint, save_checkpoint

    # the method state is tensors and plain values: it loads with weights_only=True and resumes the same model
    path = save_checkpoint(tmp_path / "c.pt", learner.cfg, learner.state_dict(), shipped_base.fingerprint)
    fresh = learner_for(name, shipped_base, tiny_features, tiny_synthxm, *extra)
    fresh.load_state_dict(load_checkpoint(path)["learner"])
    for lang in ("en", "fr"):
        assert fresh.evaluate(lang) == pytest.approx(learner.evaluate(lang))
