"""Real-data workflow without Ray: import (COCO-36, XM3600), learn two languages, export, reload in a fresh process."""

import json

import numpy as np
import pytest
import torch
from realdata import reload_embeddings, write_coco36, write_xm3600

from cll_ray.checkpoint import CHECKPOINT_FILE, save_checkpoint, task_checkpoint_name
from cll_ray.cli import main
from cll_ray.config import load_config
from cll_ray.continual import ContinualLearner
from cll_ray.export import export_model, exported_tokenizer
from cll_ray.features import load_or_compute_features
from cll_ray.importers import import_coco36, import_xm3600
from cll_ray.sequence import results_rows, run_tasks, write_jsonl, zero_shot_scores

ORDER = ["en", "ru"]
PROBES = ["a red square", "красный квадрат", "синий круг на сером фоне", "一个红色的正方形", "مربع أحمر"]


def learn_and_checkpoint(root, data, base) -> dict:
    """Learn ORDER in-process into a run directory laid out as the driver writes it (base/,
    <method>/checkpoints/taskNN-<lang>/, <method>/results.jsonl); the probes' embeddings after each task."""
    cfg = load_config(method="cll_clip_teir", overrides=[
        f"data.dataset={data}", "train.batch_size=8", "train.epochs=2", "train.lr=5e-3",
        "model.language_vocab_size=400", "model.bpe_batch_lines=8", f"run.languages=[{','.join(ORDER)}]"])
    run_dir = root / "run"
    base.save(run_dir / "base")
    features = load_or_compute_features(data, base, root / "cache", progress=False)
    learner = ContinualLearner(base, features, data, cfg)
    zero_shot = zero_shot_scores(learner, ORDER)
    embeddings = {}

    def on_task(learner, record):
        folder = run_dir / "cll_clip_teir" / "checkpoints" / task_checkpoint_name(record["index"], record["lang"])
        save_checkpoint(folder / CHECKPOINT_FILE, cfg, learner.state_dict(), base.fingerprint)
        ids = torch.from_numpy(learner.tokenizer.encode(PROBES, learner.context_length))
        with torch.no_grad():
            embeddings[record["index"] + 1] = learner.student(ids).numpy()

    run_tasks(learner, ORDER, zero_shot, progress=False, on_task=on_task)
    write_jsonl(run_dir / "cll_clip_teir" / "results.jsonl", results_rows(learner.tasks))
    return {"dir": run_dir, "learner": learner, "embeddings": embeddings, "root": root}


@pytest.fixture(scope="module")
def run(tmp_path_factory, shipped_base):
    root = tmp_path_factory.mktemp("export")
    src, images = write_coco36(root)
    import_coco36(src, images, root / "coco", progress=False)
    return dict(learn_and_checkpoint(root, root / "coco", shipped_base), images=images)


def test_export_reloads_in_a_fresh_process_with_the_runs_embeddings(run):
    out = run["root"] / "model"
    info = export_model(run["dir"], out, task=2)
    assert info["languages"] == ORDER and info["vocab_size"] == run["learner"].tokenizer.size
    assert info["vocab_size"] > info["base_vocab_size"]  # the vocabulary grew with Russian
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["pool_type"] == "eos"
    assert config["model_cfg"]["text_cfg"]["vocab_size"] == info["vocab_size"]
    reloaded = reload_embeddings(out, PROBES, run["root"])
    np.testing.assert_allclose(reloaded, run["embeddings"][2], rtol=1e-4, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "| ru |" in card and "| en |" in card and "t2i_r1" in card


def test_export_of_task_one_and_errors(run):
    out = run["root"] / "model-en"
    export_model(run["dir"], out, task=1, method="cll_clip_teir")
    from cll_ray.exported import ExportedModel

    model = ExportedModel(out)
    np.testing.assert_allclose(model.encode_text(PROBES, normalize=False), run["embeddings"][1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not learned"):
        model.check_language("ru")
    with pytest.raises(ValueError, match="no checkpoint of task 3"):
        export_model(run["dir"], run["root"] / "nope", task=3)
    assert not (run["root"] / "nope").exists()


def test_exported_tokenizer_matches_the_learner(run):
    learner = run["learner"]
    tok = exported_tokenizer(learner.tokenizer, learner.context_length)
    texts = PROBES + [" ".join(["très long"] * 60)]  # truncated: EOS must be kept
    ids = np.array([e.ids for e in tok.encode_batch(texts)])
    np.testing.assert_array_equal(ids, learner.tokenizer.encode(texts, learner.context_length))


def test_cli_export_embed_search(run, capsys):
    out = run["root"] / "model-cli"
    assert main(["export", str(run["dir"]), "--task", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["embed", "--model", str(out), "--lang", "ru", "красный квадрат", "синий круг"]) == 0
    printed = json.loads(capsys.readouterr().out)
    vectors = np.array(printed["embeddings"])
    assert vectors.shape == (2, printed["dim"]) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert capsys.readouterr().err == ""  # a learned language: no warning
    # the model scores any text: a language it never learned, or none given, is a warning (once), not an error
    assert main(["embed", "--model", str(out), "--lang", "ja", "x", "y"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning") == 1 and "'ja' was not learned" in captured.err
    assert "en, ru" in captured.err and len(json.loads(captured.out)["embeddings"]) == 2
    assert main(["search", "--model", str(out), "--images", str(run["images"]), "--top-k", "3", "--json",
                 "красный квадрат", "синий круг"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning") == 1 and "no --lang given" in captured.err
    hits = json.loads(captured.out)[0]["results"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_xm3600_carved_learn_export_reload(tmp_path, shipped_base):
    src, images = write_xm3600(tmp_path)
    import_xm3600(src, images, tmp_path / "xm", langs=ORDER, carve={"train": 0.6, "val": 0.2}, progress=False)
    run = learn_and_checkpoint(tmp_path, tmp_path / "xm", shipped_base)
    export_model(run["dir"], tmp_path / "model")
    np.testing.assert_allclose(reload_embeddings(tmp_path / "model", PROBES, tmp_path), run["embeddings"][2],
                               rtol=1e-4, atol=1e-5)


def test_bad_input_to_export_embed_and_search_is_one_clear_error(run, tmp_path, capsys):
    import shutil

    model = run["root"] / "model-bad-input"
    assert main(["export", str(run["dir"]), "--out", str(model)]) == 0
    capsys.readouterr()
    embed = ["embed", "--model", str(model)]
    assert main([*embed, ""]) == 2 and "text 1 of 1 is empty" in capsys.readouterr().err
    assert main([*embed, "ok", "  "]) == 2 and "text 2 of 2 is empty" in capsys.readouterr().err
    search = ["search", "--model", str(model), "--images", str(run["images"])]
    for k in ("0", "-3"):
        with pytest.raises(SystemExit) as stop:  # argparse: usage error, exit code 2
            main([*search, "--top-k", k, "a red square"])
        assert stop.value.code == 2 and "--top-k: expected a whole number >= 1" in capsys.readouterr().err
    # a corrupt image among the searched ones is named
    folder = tmp_path / "images"
    shutil.copytree(run["images"], folder)
    good = next(folder.rglob("*.jpg"))
    bad = good.with_name("broken.jpg")
    bad.write_bytes(good.read_bytes()[:200])
    assert main(["search", "--model", str(model), "--images", str(folder), "a red square"]) == 2
    assert f"{bad}: not a readable image" in (err := capsys.readouterr().err) and "Traceback" not in err
    # a truncated exported model is named
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    weights = damaged / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "v.npy"
    assert main(["embed", "--model", str(damaged), "--format", "npy", "--out", str(out), "x"]) == 2
    assert f"{weights} (or open_clip_config.json): not a loadable model" in capsys.readouterr().err
    assert not out.exists()


def test_export_never_replaces_a_foreign_folder_and_an_interrupted_one_keeps_the_old(run, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work", encoding="utf-8")
    assert main(["export", str(run["dir"]), "--out", str(mine)]) == 2
    assert f"{mine}: exists and is not an exported model" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    out = tmp_path / "model"
    export_model(run["dir"], out, task=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import cll_ray.export as export

    def dies(*args, **kwargs):  # killed while writing the tokenizer of the new export
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "exported_tokenizer", dies)
    with pytest.raises(KeyboardInterrupt):
        export_model(run["dir"], out, task=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export, complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
