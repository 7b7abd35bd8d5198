"""MLA as its authors built it (mla.md §1.2-§1.3), in-process on a tiny SynthXM (CPU, fp32, two steps per stage)."""

import numpy as np
import pytest
import torch

from cll_ray import dataset as ds
from cll_ray.config import load_config
from cll_ray.continual import ContinualLearner
from cll_ray.metrics import RETRIEVAL_KEYS
from cll_ray.model import MLAStudent, TextStudent
from cll_ray.sequence import run_tasks, zero_shot_scores
from cll_ray.wordpiece import CLS, PAD, SEP, UNK, WordPieceVocab, train_wordpiece

TINY = ["train.batch_size=32", "train.epochs=1", "train.lr=5e-3", "model.language_vocab_size=600",
        "train.precision=fp32", "method.mla_embedding_dim=24", "method.mla_nlt_epochs=1", "method.mla_le_epochs=1"]
ORDER = ["en", "fr", "de"]
STEPS = 2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def learner_for(name, shipped_base, tiny_features, tiny_synthxm, *overrides):
    cfg = load_config(method=name, overrides=TINY + [f"run.languages=[{','.join(ORDER)}]", *overrides])
    return ContinualLearner(shipped_base, tiny_features, tiny_synthxm, cfg)


def english_ids(learner):
    return learner.retrieval_set("en", "test").ids


@pytest.mark.parametrize("name", ["mla", "mla_teir"])
def test_english_is_the_base_model_after_every_task(name, shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for(name, shipped_base, tiny_features, tiny_synthxm)
    assert isinstance(learner.student, MLAStudent) and isinstance(learner.tokenizer, WordPieceVocab)
    base_student = TextStudent(shipped_base.clip, shipped_base.tokenizer.eos_id).eval()
    ids = english_ids(learner)
    with torch.no_grad():
        base_en = base_student(ids)
    zero_shot = zero_shot_scores(learner, ORDER)
    seen = []

    def on_task(learner, record):
        scores = record["result"]["scores"]
        assert [scores[k][0] for k in RETRIEVAL_KEYS] == [zero_shot[k][0] for k in RETRIEVAL_KEYS]  # exact
        learner.method.activate("en")
        with torch.no_grad():
            assert torch.equal(learner.student.eval()(ids), base_en)  # bit for bit: CLIP's path, no acquirer
        seen.append(record["lang"])

    before = {n: p.detach().clone() for n, p in learner.student.named_parameters()}
    run_tasks(learner, ORDER, zero_shot, steps_for=lambda rows: STEPS, progress=False, on_task=on_task)
    assert seen == ORDER
    en = learner.tasks[0]
    # the English task grows nothing, trains nothing and adds no acquirers
    assert en["growth"]["new_size"] == en["growth"]["old_size"] and en["best_epoch"] == -1 and en["history"] == []
    assert en["result"]["train_loss"] is None and "en" not in learner.method.languages
    assert learner.method.languages == ["fr", "de"]
    assert learner.tasks[-1]["result"]["cl"]["t2i_r1"]["Fen"] == 0.0  # English cannot be forgotten
    # the non-English languages moved the table and the linear map, never CLIP's own rows or the tower
    now = dict(learner.student.named_parameters())
    assert not torch.equal(now["input_map.weight"], before["input_map.weight"])
    for n in ("clip_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight"):
        assert torch.equal(now[n], before[n]), n
    assert all(torch.equal(now[n], p) for n, p in before.items() if n.startswith("transformer."))


def test_table_shapes_and_growth(shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("mla", shipped_base, tiny_features, tiny_synthxm)
    table = learner.student.token_embedding
    assert table.weight.shape == (4, 24)  # the four specials, before any language
    assert learner.student.input_map.weight.shape == (learner.student.transformer.width, 24)
    rows, tokens = {}, {}
    zero_shot = {k: [0.0] * 3 for k in RETRIEVAL_KEYS}

    def on_task(learner, record):
        rows[record["lang"]] = table.weight.detach().clone()
        tokens[record["lang"]] = dict(learner.tokenizer.vocab)

    run_tasks(learner, ORDER, zero_shot, steps_for=lambda rows: STEPS, progress=False, on_task=on_task)
    growth = {r["lang"]: r["growth"] for r in learner.tasks}
    assert growth["en"]["new_size"] == 4
    fr_caps = ds.read_captions(tiny_synthxm, "fr").captions
    fr_vocab = train_wordpiece(fr_caps, 600)
    assert growth["fr"]["new_size"] == 4 + growth["fr"]["num_unique"] == len(tokens["fr"])
    assert set(tokens["fr"]) == set(fr_vocab.vocab)  # fr's own WordPiece, appended after the specials
    assert growth["de"]["old_size"] == growth["fr"]["new_size"] and growth["de"]["num_overlap"] > 4
    # old ids and tokens are kept; the table grew to the vocabulary, width unchanged
    assert all(tokens["de"][t] == i for t, i in tokens["fr"].items())
    assert rows["de"].shape == (len(tokens["de"]), 24) and rows["fr"].shape == (len(tokens["fr"]), 24)
    new_rows = rows["fr"][4:]
    assert abs(new_rows.mean().item()) < 0.01 and new_rows.std().item() == pytest.approx(0.02, rel=0.35)
    # a non-English caption: [CLS] … [SEP] in the multilingual vocabulary, pooled at [SEP]
    ids = learner.retrieval_set("fr", "test").ids
    sep, cls_ = learner.tokenizer.vocab[SEP], learner.tokenizer.vocab[CLS]
    assert (ids[:, 0] == cls_).all() and ((ids == sep).sum(dim=1) == 1).all() and ids.max() < learner.tokenizer.size
    # the vocabulary of a checkpoint comes back as the same WordPiece
    fresh = learner_for("mla", shipped_base, tiny_features, tiny_synthxm)
    fresh.load_state_dict(learner.state_dict())
    assert fresh.tokenizer.vocab == learner.tokenizer.vocab
    for lang in ORDER:
        assert fresh.evaluate(lang) == pytest.approx(learner.evaluate(lang))


def test_mla_teir_keeps_rows_outside_the_task_still(shipped_base, tiny_features, tiny_synthxm):
    """TEIR on the separate table: r_i = 0 outside T_t, so de's task leaves fr-only rows exactly; plain mla's
    dense AdamW decays them."""
    moved = {}
    for name in ("mla_teir", "mla"):
        learner = learner_for(name, shipped_base, tiny_features, tiny_synthxm)
        zero_shot = {k: [0.0] * 3 for k in RETRIEVAL_KEYS}
        run_tasks(learner, ORDER[:2], zero_shot, steps_for=lambda rows: STEPS, progress=False)
        after_fr = learner.student.token_embedding.weight.detach().clone()
        task = learner.begin_task("de")
        learner.end_task(task, learner.train_task(task, steps_per_epoch=STEPS, progress=False))
        outside = torch.ones(len(after_fr), dtype=torch.bool)
        outside[torch.from_numpy(task.task_tokens[task.task_tokens < len(after_fr)])] = False
        assert outside.sum() > 10
        now = learner.student.token_embedding.weight.detach()[: len(after_fr)]
        moved[name] = bool((now[outside] != after_fr[outside]).any())
        inside = np.setdiff1d(task.task_tokens, learner.tokenizer.special_ids)
        inside = torch.from_numpy(inside[inside < len(after_fr)])  # tokens fr and de share
        assert len(inside) and not torch.equal(now[inside], after_fr[inside])  # de's tokens train
    assert moved == {"mla_teir": False, "mla": True}


class NoImages:
    """Stands in for a task's image features: any read is a failure."""

    def __getitem__(self, rows):
        raise AssertionError("image features were read")


@pytest.mark.parametrize("le_epochs", [0, 1])
def test_nlt_reads_no_images(le_epochs, shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("mla", shipped_base, tiny_features, tiny_synthxm, f"method.mla_le_epochs={le_epochs}")
    learner.learn("en", progress=False)
    task = learner.begin_task("fr")
    task.train.image = NoImages()
    if le_epochs == 0:  # NLT alone: distillation to the English teacher, images untouched
        outcome = learner.train_task(task, steps_per_epoch=STEPS, progress=False)
        assert [h["stage"] for h in outcome.history] == ["nlt"] and outcome.history[0]["train_cross_lingual"] > 0
    else:  # LE reads them: the stand-in is reached
        with pytest.raises(AssertionError, match="image features were read"):
            learner.train_task(task, steps_per_epoch=STEPS, progress=False)


def write_mbert(directory, captions, width=24):
    """A tiny M-BERT-shaped directory: vocab.txt in M-BERT's layout (specials at 0 and 100-103) and a BertModel."""
    from transformers import BertConfig, BertModel

    words = sorted(set(train_wordpiece(captions, 300).vocab) - {PAD, UNK, CLS, SEP})
    vocab = [PAD] + [f"[unused{i}]" for i in range(1, 100)] + [UNK, CLS, SEP, "[MASK]"] + words
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=80))
    model.save_pretrained(directory)
    return vocab, model.get_input_embeddings().weight.detach().clone()


def test_a_local_mbert_initialises_the_table(shipped_base, tiny_features, tiny_synthxm, tmp_path):
    captions = [c for lang in ("fr", "de") for c in ds.read_captions(tiny_synthxm, lang).captions]
    vocab, words = write_mbert(tmp_path / "mbert", captions)
    learner = learner_for("mla", shipped_base, tiny_features, tiny_synthxm, f"method.mbert={tmp_path / 'mbert'}")
    assert torch.equal(learner.student.token_embedding.weight, words)
    assert learner.tokenizer.vocab == {t: i for i, t in enumerate(vocab)}
    assert (learner.tokenizer.pad_id, learner.tokenizer.eos_id) == (0, 102) and learner.student.sep_id == 102
    zero_shot = {k: [0.0] * 3 for k in RETRIEVAL_KEYS}
    run_tasks(learner, ORDER, zero_shot, steps_for=lambda rows: STEPS, progress=False)
    # M-BERT's vocabulary serves every language unchanged (the authors'); the rows fr and de use trained
    assert learner.tokenizer.size == len(vocab) and all(r["growth"]["num_unique"] == 0 for r in learner.tasks)
    now = learner.student.token_embedding.weight.detach()
    used = learner.tokenizer.token_set(ds.read_captions(tiny_synthxm, "fr").captions)
    assert not torch.equal(now[used], words[used])
    ids = learner.retrieval_set("fr", "test").ids
    assert (ids[:, 0] == 101).all() and ((ids == 102).sum(dim=1) == 1).all()
    # a width that is not the M-BERT's, or a directory without vocab.txt: clear errors
    with pytest.raises(ValueError, match="768-d|24-d"):
        learner_for("mla", shipped_base, tiny_features, tiny_synthxm, f"method.mbert={tmp_path / 'mbert'}",
                    "method.mla_embedding_dim=32")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        learner_for("mla", shipped_base, tiny_features, tiny_synthxm, f"method.mbert={tmp_path}")


def test_mla_joint_trains_every_language_at_once_one_per_batch(shipped_base, tiny_features, tiny_synthxm):
    learner = learner_for("mla_joint", shipped_base, tiny_features, tiny_synthxm)
    zero_shot = zero_shot_scores(learner, ORDER)
    routes = []
    original = learner.method.extend_batch

    def extend_batch(batch):
        out = original(batch)
        routes.append((set(batch["group"].tolist()), [s.active for s in learner.method.sites][0], "image" in batch))
        return out

    learner.method.extend_batch = extend_batch
    run_tasks(learner, ORDER, zero_shot, steps_for=None, progress=False)
    assert [r["lang"] for r in learner.tasks] == ["joint"] and learner.method.languages == ["fr", "de"]
    assert all(len(groups) == 1 for groups, _, _ in routes)  # one language per batch
    assert {active for _, active, _ in routes} == {"fr", "de"}  # routed to that language's acquirers
    assert [active for groups, active, _ in routes] == [["fr", "de"][next(iter(g))] for g, _, _ in routes]
    stages = [h["stage"] for h in learner.tasks[0]["history"]]
    assert stages == ["nlt", "le"]  # NLT over every language, then LE from its result
    n_nlt = learner.tasks[0]["history"][0]["steps"]
    assert not any(img for _, _, img in routes[:n_nlt]) and all(img for _, _, img in routes[n_nlt:])
    result = learner.tasks[0]["result"]
    assert result["joint"] and result["languages"] == ORDER
    assert result["scores"]["t2i_r1"][0] == zero_shot["t2i_r1"][0]  # English is CLIP's
    growth = learner.tasks[0]["growth"]
    captions = [c for lang in ("fr", "de") for c in ds.read_captions(tiny_synthxm, lang).captions]
    assert growth["new_size"] == train_wordpiece(captions, 600 * 2).size  # one WordPiece over fr + de


def test_export_embed_search_route_by_language(shipped_base, tiny_features, tiny_synthxm, tmp_path):
    from cll_ray.checkpoint import CHECKPOINT_FILE, save_checkpoint, task_checkpoint_name
    from cll_ray.export import export_model
    from cll_ray.exported import ExportedModel

    learner = learner_for("mla", shipped_base, tiny_features, tiny_synthxm)
    run_dir = tmp_path / "run"
    shipped_base.save(run_dir / "base")

    def on_task(learner, record):
        folder = run_dir / "mla" / "checkpoints" / task_checkpoint_name(record["index"], record["lang"])
        save_checkpoint(folder / CHECKPOINT_FILE, learner.cfg, learner.state_dict(), shipped_base.fingerprint)

    zero_shot = {k: [0.0] * 3 for k in RETRIEVAL_KEYS}
    run_tasks(learner, ORDER, zero_shot, steps_for=lambda rows: STEPS, progress=False, on_task=on_task)
    info = export_model(run_dir, tmp_path / "model")
    assert info["languages"] == ORDER and info["mla"]["languages"] == ["fr", "de"]
    model = ExportedModel(tmp_path / "model", device="cpu")
    for lang in ORDER:
        caps = ds.read_captions(tiny_synthxm, lang, splits=("test",)).captions[:12]
        learner.method.activate(lang)
        ids = torch.from_numpy(learner.tokenizer_for(lang).encode(caps, learner.context_length))
        with torch.no_grad():
            expected = torch.nn.functional.normalize(learner.student.eval()(ids), dim=-1).numpy()
        np.testing.assert_allclose(model.encode_text(caps, lang=lang), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="language"):
        model.encode_text(["un chat"])  # an mla model needs the query's language
    with pytest.raises(ValueError, match="not learned"):
        model.encode_text(["x"], lang="ja")


def test_the_drivers_growth_plan_and_caption_encoding(shipped_base, tiny_features, tiny_synthxm, tmp_path):
    """What the Ray driver does for mla: plan the WordPiece growth once, encode each language's captions with the
    tokenizer of its task (English: CLIP's), and the workers' learners take the plan's prefixes."""
    from cll_ray.distributed.train_data import EncodeCaptions

    planner = learner_for("mla", shipped_base, tiny_features, tiny_synthxm)
    final, stats = planner.plan_growth(ORDER)
    planner.use_plan(final, stats)
    assert isinstance(final, WordPieceVocab) and [g.lang for g in stats] == ORDER and stats[0].num_unique == 0
    assert planner.task_tokenizer("en") is shipped_base.tokenizer
    worker = learner_for("mla", shipped_base, tiny_features, tiny_synthxm)
    worker.use_plan(final, stats)
    in_process = learner_for("mla", shipped_base, tiny_features, tiny_synthxm)
    for lang in ORDER:
        assert worker.begin_task(lang, build_train=False).growth == in_process.begin_task(lang).growth
        assert worker.tokenizer.vocab == in_process.tokenizer.vocab
        if lang != "en":
            assert planner.task_tokenizer(lang).vocab == worker.tokenizer.vocab
    tiny_features.save(tmp_path / "features")
    encode = EncodeCaptions([{lang: planner.task_tokenizer(lang).to_json() for lang in ORDER}],
                            worker.context_length, str(tmp_path / "features"))
    for lang in ORDER:
        caps = ds.read_captions(tiny_synthxm, lang, require_english=lang != "en")
        batch = {"lang": np.array([lang] * 4), "caption": np.array(caps.captions[:4]),
                 "caption_en": np.array((caps.captions if lang == "en" else caps.captions_en)[:4]),
                 "image_id": np.array(caps.image_ids[:4]), "caption_index": np.arange(4)}
        ids = encode(batch)["ids_0"]
        np.testing.assert_array_equal(ids, planner.task_tokenizer(lang).encode(caps.captions[:4], worker.context_length))
        first = shipped_base.tokenizer.bos_id if lang == "en" else final.vocab[CLS]  # CLIP's BPE, or the WordPiece
        assert (ids[:, 0] == first).all()
