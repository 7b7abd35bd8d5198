"""Tracker (real TensorBoard event files) and the run report, on a fake but consistent 3-task run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cll_ray.metrics import CL_KEYS, RETRIEVAL_KEYS, cl_metrics
from cll_ray.report import (
    accuracy_matrix,
    across_runs_table,
    build_report,
    collect_results,
    final_table,
    load_results,
    main,
    results_table,
    runs_by_method,
)
from cll_ray.tracking import CL_TAG, EVAL_TAG, HPARAMS_RUN, MATRIX_TAG, TRAIN_TAG, Tracker

NAN = math.nan
ORDER = ["en", "fr", "de"]

# t2i_r1 accuracy matrices (row t: score on each seen language after task t) and the base model's zero-shot
# scores, with their CL values worked out by hand (AA, F, Fen, BWT, FWT, plasticity per task).
T2I_R1 = {
    "cll_clip": [[40.0], [36.0, 30.0], [33.0, 25.0, 29.0]],
    "cll_clip_teir": [[40.0], [39.0, 33.0], [38.0, 32.0, 35.0]],
}
ZERO_SHOT = [40.0, 2.0, 1.0]
CL_T2I_R1 = {
    "cll_clip": [
        {"AA": 40.0, "F": NAN, "Fen": NAN, "BWT": NAN, "FWT": NAN, "plasticity": 40.0},
        # AA (36+30)/2; F = Fen = 40-36; BWT 36-40; FWT 30-2; plasticity (40+30)/2
        {"AA": 33.0, "F": 4.0, "Fen": 4.0, "BWT": -4.0, "FWT": 28.0, "plasticity": 35.0},
        # AA (33+25+29)/3; F mean(40-33, 30-25); Fen 40-33; BWT mean(33-40, 25-30); FWT mean(30-2, 29-1)
        {"AA": 29.0, "F": 6.0, "Fen": 7.0, "BWT": -6.0, "FWT": 28.0, "plasticity": 33.0},
    ],
    "cll_clip_teir": [
        {"AA": 40.0, "F": NAN, "Fen": NAN, "BWT": NAN, "FWT": NAN, "plasticity": 40.0},
        {"AA": 36.0, "F": 1.0, "Fen": 1.0, "BWT": -1.0, "FWT": 31.0, "plasticity": 36.5},
        # AA (38+32+35)/3; F mean(40-38, 33-32); FWT mean(33-2, 35-1); plasticity (40+33+35)/3
        {"AA": 35.0, "F": 1.5, "Fen": 2.0, "BWT": -1.5, "FWT": 32.5, "plasticity": 36.0},
    ],
}
# Every other metric is t2i_r1 shifted by a constant (zero-shot included): AA, plasticity shift with it,
# F, Fen, BWT and FWT (differences) do not.
OFFSETS = {
    "t2i_r1": 0,
    "t2i_r5": 20,
    "t2i_r10": 30,
    "i2t_r1": 5,
    "i2t_r5": 25,
    "i2t_r10": 35,
    "t2i_r_mean": 17,
    "i2t_r_mean": 22,
    "r_mean": 19.5,
}
GROWTH = [
    None,
    {"lang": "fr", "old_size": 1200, "new_size": 1500},
    {"lang": "de", "old_size": 1500, "new_size": 1740},
]


def make_rows(method: str, like: str | None = None) -> list[dict]:
    """The rows of ``method``, with the numbers of ``like`` (default: its own)."""
    data = like or method
    rows = []
    for t, lang in enumerate(ORDER):
        scores = {m: [v + off for v in T2I_R1[data][t]] for m, off in OFFSETS.items()}
        cl = {
            m: {k: v + off if k in ("AA", "plasticity") else v for k, v in CL_T2I_R1[data][t].items()}
            for m, off in OFFSETS.items()
        }
        growth = GROWTH[t] and dict(
            GROWTH[t], language_vocab=2000, num_overlap=1700, num_unique=300, merges_added=290
        )
        rows.append(
            {
                "task": t,
                "lang": lang,
                "method": method,
                "seconds": 10.0 + t,
                "languages": ORDER[: t + 1],
                "order": ORDER,
                "growth": growth,
                "best_epoch": 2,
                "best_val_r_mean": 50.0 + t,
                "scores": scores,
                "cl": cl,
                "zero_shot": {m: [v + off for v in ZERO_SHOT] for m, off in OFFSETS.items()},
            }
        )
    return rows


def write_run(run_dir, methods=("cll_clip", "cll_clip_teir"), like=None):
    for method in methods:
        (run_dir / method).mkdir(parents=True)
        (run_dir / method / "config.yaml").write_text(f"method:\n  name: {method}\n")
        lines = "".join(json.dumps(r) + "\n" for r in make_rows(method, like))  # NaN is written as NaN
        (run_dir / method / "results.jsonl").write_text(lines)
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path / "runA")


def test_fixture_is_consistent():
    """The hand-computed CL values are those of cll_ray.metrics."""
    for method in T2I_R1:
        rows = make_rows(method)
        for metric in ("t2i_r1", "i2t_r1"):
            a = accuracy_matrix(rows, metric)
            b = np.asarray(rows[0]["zero_shot"][metric])
            for t, row in enumerate(rows):
                expected = cl_metrics(a[: t + 1, : t + 1], b[: t + 1])
                assert set(row["cl"][metric]) == set(CL_KEYS)
                for k in CL_KEYS:
                    np.testing.assert_allclose(row["cl"][metric][k], expected[k], equal_nan=True)


def _accumulator(path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _series(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tracker_writes_tensorboard(run_dir, tmp_path):
    rows = load_results(run_dir)["cll_clip_teir"]
    logdir = tmp_path / "tb"
    tracker = Tracker(logdir)
    assert not logdir.exists()  # the writer is created lazily
    for step, loss in enumerate([2.0, 1.5, 1.25]):
        tracker.log_step("fr", 10 + step, {"loss": loss, "lr": 1e-4})
    for row in rows:
        tracker.log_task(row)
    tracker.log_hparams(
        {
            "method": "cll_clip_teir",
            "train": {"lr": 1e-4, "epochs": 3, "amp": True},
            "run": {"languages": ORDER, "name": None},
        },
        {"final": {"t2i_r1_AA": 35.0, "F": NAN}},
    )
    tracker.close()

    acc = _accumulator(logdir)
    tags = set(acc.Tags()["scalars"])
    assert _series(acc, TRAIN_TAG.format(lang="fr", name="loss")) == [(10, 2.0), (11, 1.5), (12, 1.25)]
    assert _series(acc, "train/fr/lr") == [(s, pytest.approx(1e-4)) for s in (10, 11, 12)]

    # eval/<lang>/<metric>: one point per task from the task that learned the language on
    assert _series(acc, EVAL_TAG.format(lang="fr", metric="t2i_r1")) == [(2, 33.0), (3, 32.0)]
    assert dict(_series(acc, "eval/fr/t2i_r1"))[2] == rows[1]["scores"]["t2i_r1"][1]
    assert _series(acc, "eval/en/i2t_r1") == [(1, 45.0), (2, 44.0), (3, 43.0)]
    assert _series(acc, "eval/de/r_mean") == [(3, 54.5)]
    assert {f"eval/{lang}/{m}" for lang in ORDER for m in RETRIEVAL_KEYS} <= tags

    # cl/<metric>/<key> on the task axis (1-based), NaN (task 1's F, Fen, BWT, FWT) skipped
    assert _series(acc, CL_TAG.format(metric="t2i_r1", key="AA")) == [(1, 40.0), (2, 36.0), (3, 35.0)]
    assert _series(acc, "cl/i2t_r1/plasticity") == [(1, 45.0), (2, 41.5), (3, 41.0)]
    assert _series(acc, "cl/t2i_r1/F") == [(2, 1.0), (3, 1.5)]
    assert _series(acc, "cl/r_mean/FWT") == [(2, 31.0), (3, 32.5)]
    assert all(math.isfinite(e.value) for tag in tags for e in acc.Scalars(tag))

    assert _series(acc, "vocab/size") == [(2, 1500.0), (3, 1740.0)]
    assert _series(acc, "vocab/new_tokens") == [(2, 300.0), (3, 240.0)]
    assert _series(acc, "task/seconds") == [(1, 10.0), (2, 11.0), (3, 12.0)]

    images = acc.Tags()["images"]
    assert set(images) == {MATRIX_TAG.format(metric="t2i_r1"), MATRIX_TAG.format(metric="i2t_r1")}
    shots = acc.Images("cl/accuracy_matrix/t2i_r1")
    assert [im.step for im in shots] == [1, 2, 3]
    assert (
        shots[-1].width > 200 and shots[-1].height > 150 and shots[-1].encoded_image_string[:4] == b"\x89PNG"
    )

    # add_hparams writes a sub-directory: the flattened hparams and the finite metrics
    from tensorboard.plugins.hparams import metadata

    hp = _accumulator(logdir / HPARAMS_RUN)
    assert _series(hp, "final.t2i_r1_AA") == [(0, 35.0)]
    assert "final.F" not in hp.Tags()["scalars"]
    content = hp.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    assert set(start.hparams) == {"method", "train.lr", "train.epochs", "train.amp", "run.languages"}
    assert start.hparams["run.languages"].string_value == "en,fr,de"
    assert start.hparams["train.lr"].number_value == pytest.approx(1e-4)


def test_tracker_matrix_follows_the_rows(tmp_path):
    """A re-logged task replaces the later rows it had; the matrix is rebuilt from the kept rows."""
    rows = make_rows("cll_clip")
    tracker = Tracker(tmp_path / "tb")
    for row in rows:
        tracker.log_task(row)
    tracker.log_task(rows[1])
    assert [r["task"] for r in tracker.rows] == [0, 1]
    tracker.close()
    tracker.close()  # idempotent


def test_accuracy_matrix_rebuilds_exactly(run_dir):
    rows = load_results(run_dir)["cll_clip"]
    a = accuracy_matrix(rows, "t2i_r1")
    np.testing.assert_array_equal(a, [[40.0, NAN, NAN], [36.0, 30.0, NAN], [33.0, 25.0, 29.0]])
    np.testing.assert_array_equal(accuracy_matrix(rows, "i2t_r1"), a + 5)
    np.testing.assert_array_equal(accuracy_matrix(rows[:2], "t2i_r1"), [[40.0, NAN], [36.0, 30.0]])


def test_load_results_method_folder_and_errors(run_dir, tmp_path):
    assert list(load_results(run_dir)) == ["cll_clip", "cll_clip_teir"]
    (run_dir / "tensorboard").mkdir()  # ignored: no config.yaml, no results.jsonl
    assert list(load_results(run_dir)) == ["cll_clip", "cll_clip_teir"]
    single = load_results(run_dir / "cll_clip")
    assert list(single) == ["cll_clip"] and len(single["cll_clip"]) == 3
    assert math.isnan(single["cll_clip"][0]["cl"]["t2i_r1"]["F"])

    path = run_dir / "cll_clip" / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"task": 1, "lang": "fr", "scores": {\n' + lines[2])
    with pytest.raises(ValueError, match=rf"{path}:2: corrupt line"):
        load_results(run_dir)
    path.write_text(lines[0] + lines[2])
    with pytest.raises(ValueError, match=rf"{path}:2: expected task 1"):
        load_results(run_dir)

    empty = tmp_path / "empty"
    empty.mkdir()
    path.unlink()  # a method folder (config.yaml) without results
    with pytest.raises(FileNotFoundError, match=rf"{path}: missing"):
        load_results(run_dir)
    with pytest.raises(FileNotFoundError, match="no results.jsonl"):
        load_results(empty)


def test_final_table(run_dir):
    results = load_results(run_dir)
    table = final_table(results)
    lines = table.splitlines()
    assert lines[0].startswith(
        "| method | tasks | t2i_r1 AA | t2i_r1 F | t2i_r1 Fen | t2i_r1 BWT | t2i_r1 FWT |"
    )
    assert "| r_mean plasticity |" in lines[0]
    assert lines[2].startswith("| cll_clip | 3 | 29.0 | 6.0 | 7.0 | -6.0 | 28.0 | 33.0 | 34.0 | 6.0 |")
    assert lines[3].startswith("| cll_clip_teir | 3 | 35.0 | 1.5 | 2.0 | -1.5 | 32.5 | 36.0 | 40.0 | 1.5 |")
    partial = final_table({"m": results["cll_clip"][:1]}, metrics=("t2i_r1",)).splitlines()[2]
    assert partial == "| m | 1/3 | 40.0 | – | – | – | – | 40.0 |"


def _png(path):
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 300 and im.height >= 250
        assert len(set(im.convert("L").getdata())) > 10  # not a blank canvas


def test_build_report(run_dir, capsys):
    report = build_report([run_dir])
    assert report == run_dir / "report.md"
    text = report.read_text()
    assert text.startswith("# CLL report: runA")
    assert "task order: en → fr → de" in text
    assert "| cll_clip | 3 | 29.0 | 6.0 | 7.0 | -6.0 | 28.0 | 33.0 |" in text
    assert "| cll_clip_teir | 3 | 35.0 | 1.5 | 2.0 | -1.5 | 32.5 | 36.0 |" in text
    assert "| method | 1 en | 2 fr | 3 de |" in text  # per-task AA series
    assert "| cll_clip | 40.0 | 33.0 | 29.0 |" in text and "| cll_clip_teir | 45.0 | 41.0 | 40.0 |" in text
    assert "| method | en | fr | de | final vocab |" in text  # growth
    assert "| cll_clip | – | 300 | 240 | 1740 |" in text

    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == sorted(
        [
            "heatmap_cll_clip_t2i_r1.png",
            "heatmap_cll_clip_teir_t2i_r1.png",
            "heatmap_cll_clip_i2t_r1.png",
            "heatmap_cll_clip_teir_i2t_r1.png",
            "forgetting_cll_clip.png",
            "forgetting_cll_clip_teir.png",
            "curves_AA_t2i_r1.png",
            "curves_F_t2i_r1.png",
            "curves_AA_i2t_r1.png",
            "curves_F_i2t_r1.png",
        ]
    )
    for name in plots:
        _png(run_dir / "plots" / name)
        assert f"(plots/{name})" in text
    assert not [p for p in run_dir.rglob("*.tmp")]  # atomic writes leave no temporary files

    assert main([str(run_dir), "--out", str(run_dir / "out")]) == 0
    out = capsys.readouterr().out
    assert "| cll_clip_teir | 3 | 35.0 |" in out and str(run_dir / "out" / "report.md") in out
    assert (run_dir / "out" / "plots" / "curves_AA_t2i_r1.png").is_file()
    assert main([str(run_dir / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_report_summary_forgetting_config_wall_time_and_versions(run_dir):
    from importlib.metadata import version

    from cll_ray.report.builder import record_run_info
    from cll_ray.report.plots import forgetting_scores

    # the compact table: T2I then I2T AA / F / Fen / plasticity after the last task, the best of each in bold
    # (i2t_r1 is t2i_r1 + 5 for AA and plasticity, the same forgetting)
    text = build_report([run_dir]).read_text()
    summary = text.split("## Summary")[1].split("##")[0]
    assert "| method | tasks | T2I AA | T2I F | T2I Fen | T2I plast. | I2T AA | I2T F | I2T Fen | I2T plast. |" in summary
    assert "| cll_clip | 3 | 29.0 | 6.0 | 7.0 | 33.0 | 34.0 | 6.0 | 7.0 | 38.0 |" in summary
    assert "| cll_clip_teir | 3 | **35.0** | **1.5** | **2.0** | **36.0** | **40.0** | **1.5** | **2.0** | **41.0** |" in summary
    assert max(len(line) for line in summary.splitlines() if line.startswith("|")) <= 110  # fits a page
    # forgetting per language: each language's score after its own task (the diagonal) and after the last
    langs, own, last = forgetting_scores(make_rows("cll_clip"), "t2i_r1")
    assert langs == ORDER and own.tolist() == [40.0, 30.0, 29.0] and last.tolist() == [33.0, 25.0, 29.0]
    assert "(plots/forgetting_cll_clip.png)" in text.split("### Forgetting per language")[1]
    # the I2T heatmap beside the T2I one, on one row per method
    assert "| cll_clip | ![cll_clip, t2i_r1](plots/heatmap_cll_clip_t2i_r1.png) | " \
           "![cll_clip, i2t_r1](plots/heatmap_cll_clip_i2t_r1.png) |" in text
    # the config: each method's config.yaml, the keys they differ on side by side
    assert "| `method.name` | `cll_clip` | `cll_clip_teir` |" in text.split("## Config")[1]
    # without run_info.json: the task times and this build's versions, said so
    assert "training time (sum of the task times; the run recorded no wall time): cll_clip 33 s" in text
    assert f"(of this report's build: the run recorded none): cll-ray {version('cll-ray')}, torch " in text
    # a run recorded in two parts (interrupted, resumed): their sum, and the versions it ran with
    record_run_info(run_dir, 100.0)
    record_run_info(run_dir, 23.4)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["wall_seconds"] == [100.0, 23.4] and info["versions"]["ray"] == version("ray")
    text = build_report([run_dir]).read_text()
    assert "- wall time: 123 s in 2 parts (resumed)" in text
    assert f"- versions: cll-ray {version('cll-ray')}, torch {version('torch')}, ray {version('ray')}, " \
           f"open_clip {version('open_clip_torch')}" in text


def test_report_pieces_from_real_runs_results(tmp_path):
    """The committed results of real runs (the default run; a joint run beside ER): every piece is there."""
    from cll_ray.config import load_yaml_file

    root = Path(__file__).resolve().parents[1] / "results"
    shutil.copytree(root / "default", tmp_path / "default")
    shutil.copytree(root / "joint-ceiling" / "as-run", tmp_path / "as-run")
    text = build_report([tmp_path / "default"]).read_text()
    rows = load_results(tmp_path / "default")
    for method, method_rows in rows.items():
        cl = method_rows[-1]["cl"]
        cells = [f"{cl[m][k]:.1f}" for m in ("t2i_r1", "i2t_r1") for k in ("AA", "F", "Fen", "plasticity")]
        summary_row = next(line for line in text.split("## Summary")[1].splitlines() if line.startswith(f"| {method} |"))
        assert [c.strip("* ") for c in summary_row.split("|")[3:-1]] == cells
        for name in (f"heatmap_{method}_t2i_r1", f"heatmap_{method}_i2t_r1", f"forgetting_{method}"):
            _png(tmp_path / "default" / "plots" / f"{name}.png")
            assert f"(plots/{name}.png)" in text
    lr = load_yaml_file(tmp_path / "default" / "cll_clip" / "config.yaml")["train"]["lr"]
    assert f"| `train.lr` | `{lr}` |" in text and "| `method.init` | `normal` | `teir` |" in text
    # a joint run learns every language in one task: no forgetting plot for it, one for ER
    text = build_report([tmp_path / "as-run"]).read_text()
    assert (tmp_path / "as-run" / "plots" / "forgetting_er_teir.png").exists()
    assert not (tmp_path / "as-run" / "plots" / "forgetting_joint.png").exists()
    assert "heatmap_joint_i2t_r1.png" in text


def test_two_runs_are_disambiguated(run_dir, tmp_path):
    other = tmp_path / "runB"
    shutil.copytree(run_dir / "cll_clip", other / "cll_clip")
    write_run(other, methods=("mla",), like="cll_clip_teir")
    labels = list(collect_results([run_dir, other]))
    assert labels == ["runA/cll_clip", "cll_clip_teir", "runB/cll_clip", "mla"]

    report = build_report([run_dir, other], out_dir=tmp_path / "cmp")
    text = report.read_text()
    assert report == tmp_path / "cmp" / "report.md"
    assert "| runA/cll_clip | 3 | 29.0 |" in text and "| runB/cll_clip | 3 | 29.0 |" in text
    assert (tmp_path / "cmp" / "plots" / "heatmap_runA__cll_clip_t2i_r1.png").is_file()
    assert (tmp_path / "cmp" / "plots" / "heatmap_runB__cll_clip_t2i_r1.png").is_file()

    same_name = tmp_path / "x" / "runA"  # runs with the same folder name: a longer suffix tells them apart
    shutil.copytree(run_dir / "cll_clip", same_name / "cll_clip")
    assert list(collect_results([run_dir, same_name])) == [
        f"{tmp_path.name}/runA/cll_clip",
        "cll_clip_teir",
        "x/runA/cll_clip",
    ]


def test_methods_compared_across_runs(run_dir, tmp_path, capsys):
    """Runs of the same methods (other task orders, say) are compared as mean ± std per method."""
    other = write_run(tmp_path / "runB", methods=("cll_clip",), like="cll_clip_teir")
    write_run(other, methods=("mla",), like="cll_clip")
    results = collect_results([run_dir, other])
    assert runs_by_method(results) == {"cll_clip": [results["runA/cll_clip"], results["runB/cll_clip"]],
                                       "cll_clip_teir": [results["cll_clip_teir"]], "mla": [results["mla"]]}
    table = across_runs_table(results)
    assert table.splitlines()[0] == ("| method | runs | tasks | t2i_r1 AA | t2i_r1 F | t2i_r1 Fen | t2i_r1 plasticity "
                                     "| i2t_r1 AA | i2t_r1 F | i2t_r1 Fen | i2t_r1 plasticity |")
    # cll_clip: AA 29 and 35, Fen 7 and 2, plasticity 33 and 36 (population std); i2t is t2i + 5 for AA
    assert "| cll_clip | 2 | 3 | 32.0 ± 3.0 | 3.8 ± 2.2 | 4.5 ± 2.5 | 34.5 ± 1.5 | 37.0 ± 3.0 |" in table
    assert "| cll_clip_teir | 1 | 3 | 35.0 | 1.5 | 2.0 | 36.0 | 40.0 |" in table

    short = write_run(tmp_path / "runC", methods=("cll_clip",))
    lines = (short / "cll_clip" / "results.jsonl").read_text().splitlines()
    (short / "cll_clip" / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")  # stopped after task 2
    assert "| cll_clip | 3 | 3, 2/3 |" in across_runs_table(collect_results([run_dir, other, short]))

    text = build_report([run_dir, other], out_dir=tmp_path / "cmp").read_text()
    assert "## Methods across runs" in text and table in text
    assert "## Methods across runs" not in build_report([run_dir], out_dir=tmp_path / "one").read_text()
    assert main([str(run_dir), str(other), "--out", str(tmp_path / "cmp2")]) == 0
    assert table in capsys.readouterr().out


def test_results_table_and_copied_results(run_dir, tmp_path, capsys):
    """`report --table` prints what the README shows, from the copied results alone (no checkpoints, no events)."""
    other = write_run(tmp_path / "runB", methods=("cll_clip",), like="cll_clip_teir")
    (run_dir / "cll_clip" / "checkpoints").mkdir()
    (run_dir / "cll_clip" / "checkpoints" / "learner.pt").write_bytes(b"weights")
    (run_dir / "train" / "x" / "cll_clip").mkdir(parents=True)  # Ray Train's folder: never a result
    (run_dir / "train" / "x" / "cll_clip" / "results.jsonl").write_text("{}\n")
    assert main([str(run_dir), str(other), "--copy-results", str(tmp_path / "results" / "cmp")]) == 0
    copied = sorted(p.relative_to(tmp_path / "results" / "cmp").as_posix()
                    for p in (tmp_path / "results" / "cmp").rglob("*") if p.is_file())
    assert copied == ["runA/cll_clip/config.yaml", "runA/cll_clip/results.jsonl", "runA/cll_clip_teir/config.yaml",
                      "runA/cll_clip_teir/results.jsonl", "runB/cll_clip/config.yaml", "runB/cll_clip/results.jsonl"]
    assert main([str(run_dir), "--copy-results", str(tmp_path / "results" / "cmp")]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err

    paper = tmp_path / "paper.yaml"
    paper.write_text("header: paper T2I AA\nmethods:\n  cll_clip: '17.6'\n")
    capsys.readouterr()
    assert main([*(str(p) for p in (tmp_path / "results" / "cmp").iterdir()), "--table", "--paper", str(paper)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == results_table(collect_results([run_dir, other]), {"header": "paper T2I AA",
                                                                          "methods": {"cll_clip": "17.6"}})
    lines = printed.splitlines()
    assert lines[0] == ("| method | runs | T2I AA | T2I F | T2I Fen | T2I plast. | I2T AA | I2T F | I2T Fen | "
                        "I2T plast. | paper T2I AA |")
    assert lines[2].startswith("| `cll_clip` | 2 | 32.0 ± 3.0 | 3.8 ± 2.2 | 4.5 ± 2.5 | 34.5 ± 1.5 | 37.0 ± 3.0 |")
    assert lines[2].endswith("| 17.6 |") and lines[3].endswith("| not in the paper |")
    assert not (run_dir / "report.md").exists()  # --table writes nothing

    short = write_run(tmp_path / "runC", methods=("cll_clip",))
    rows = (short / "cll_clip" / "results.jsonl").read_text().splitlines()
    (short / "cll_clip" / "results.jsonl").write_text("\n".join(rows[:2]) + "\n")
    with pytest.raises(ValueError, match="cll_clip: a run stopped after 2 of 3 tasks"):
        results_table(collect_results([short]))


def test_results_table_by_run_keeps_runs_apart(run_dir, tmp_path):
    other = write_run(tmp_path / "runB", methods=("cll_clip",), like="cll_clip_teir")
    lines = results_table(collect_results([run_dir, other]), by_run=True).splitlines()
    assert [line.split(" | ")[0:2] for line in lines[2:]] == [["| `runA/cll_clip`", "1"], ["| `cll_clip_teir`", "1"],
                                                              ["| `runB/cll_clip`", "1"]]
    assert lines[2].split(" | ")[2] == "29.0" and lines[4].split(" | ")[2] == "35.0"


def test_a_report_killed_while_writing_leaves_the_previous_one(run_dir, monkeypatch):
    from pathlib import Path

    report = build_report([run_dir])
    before = {p: p.read_bytes() for p in [report, *(run_dir / "plots").iterdir()]}
    real = Path.write_text

    def half_then_killed(self, text, *args, **kwargs):  # the process dies halfway through the new report.md
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        build_report([run_dir])
    monkeypatch.setattr(Path, "write_text", real)
    assert report.read_bytes() == before[report]  # the previous complete report, not half a new one
    assert not [p for p in run_dir.rglob(".*") if p.name.endswith(".tmp")]


def test_one_run_is_copied_as_the_results_folder_itself(run_dir, tmp_path):
    assert main([str(run_dir), "--copy-results", str(tmp_path / "default")]) == 0
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["cll_clip", "cll_clip_teir"]
    assert collect_results([tmp_path / "default"]) == collect_results([run_dir])
