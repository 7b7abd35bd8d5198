"""The ``cll-ray`` command line: parses arguments and calls the library, nothing else."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_METHODS = "cll_clip,cll_clip_teir"  # `cll-ray run` without --methods or a named method

# Set before Ray is imported: workers use this interpreter as it is (no per-job uv environment), quiet bars.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# a loaded machine can take over a minute to start worker processes (Ray Train gives up after 60 s by default)
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")


def _synth(args: argparse.Namespace) -> int:
    from cll_ray.sequence import cll_ray_home, synthxm_dir
    from cll_ray.synthxm import format_summary, generate_synthxm, synthxm_summary

    out = Path(args.out) if args.out else synthxm_dir(cll_ray_home(), args.size, args.seed)
    langs = args.langs.split(",") if args.langs else None
    started = time.time()
    manifest = generate_synthxm(out, size=args.size, languages=langs, seed=args.seed, progress=True,
                                overwrite=args.overwrite)
    print(f"SynthXM ({args.size}, seed {args.seed}) at {out} in {time.time() - started:.1f}s: "
          f"{sum(manifest['splits'].values())} images, {len(manifest['languages'])} languages")
    print(format_summary(synthxm_summary(out)))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from cll_ray.pretrain import PretrainConfig, load_or_pretrain
    from cll_ray.sequence import cll_ray_home, synthxm_dir
    from cll_ray.synthxm import generate_synthxm

    if args.out:
        from cll_ray.io import check_replaceable

        check_replaceable(args.out, "base.json", "a base model folder")  # before any work, not after
    dataset = Path(args.data) if args.data else synthxm_dir(cll_ray_home(), args.size, args.data_seed)
    if not args.data:
        generate_synthxm(dataset, size=args.size, seed=args.data_seed, progress=True)
    cfg = PretrainConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    base, folder, cached = load_or_pretrain(dataset, cll_ray_home(), cfg, progress=True)
    if args.out:
        base.save(args.out)
        folder = Path(args.out)
    info = base.info
    print(f"base model: {folder} ({'cached' if cached else 'trained'}; {info.get('train_seconds', '?')}s of training)")
    for step in info.get("curve", []):
        print(f"  step {step['step']:>5}  {step['seconds']:>7.1f}s  loss {step['loss']:.3f}  "
              f"val t2i R@1 {step['val_t2i_r1']:5.1f}  val i2t R@1 {step['val_i2t_r1']:5.1f}")
    test = info["test_en"]
    print(f"English test retrieval ({info.get('test_images', '?')} images, {info.get('test_captions', '?')} captions):")
    for direction in ("t2i", "i2t"):
        print(f"  {direction}: R@1 {test[f'{direction}_r1']:.1f}  R@5 {test[f'{direction}_r5']:.1f}  R@10 {test[f'{direction}_r10']:.1f}")
    return 0


def run_overrides(args: argparse.Namespace) -> list[str]:
    """`cll-ray run`'s options as the dotted overrides they stand for, after the user's own."""
    from cll_ray.orders import resolve_order

    overrides = list(args.overrides)
    if args.langs is not None or args.order:
        if args.langs is None:
            raise ValueError("--order needs --langs (a comma-separated list, or all)")
        overrides.append(f"run.languages=[{','.join(resolve_order(args.langs, args.order))}]")
    if args.workers is not None:
        overrides.append(f"run.num_workers={args.workers}")
    if args.orders is not None:
        overrides.append(f"run.orders={args.orders}")
    return overrides


def run_configs(args: argparse.Namespace) -> dict:
    """`cll-ray run`'s config per method: --methods, else the method the experiment file or an override names,
    else the default pair."""
    from cll_ray.config import load_config, method_list, named_method

    overrides = run_overrides(args)
    names = method_list(args.methods if args.methods is not None
                        else named_method(args.config, overrides) or DEFAULT_METHODS)
    return {m: load_config(args.config, method=m, overrides=overrides) for m in names}


def _run(args: argparse.Namespace) -> int:
    started = time.time()
    if args.dry_run:
        if args.resume:
            raise ValueError("--dry-run is for a new run; --resume continues the run its directory holds")
        from cll_ray.dry_run import dry_run

        print(dry_run(run_configs(args), progress=not args.quiet))
        return 0
    if args.resume:
        from cll_ray.checkpoint import check_resumable, load_run_configs  # no Ray import: fails fast

        run_dir = Path(args.resume).expanduser().resolve()
        configs = load_run_configs(run_dir)
        found = check_resumable(run_dir, configs)  # a corrupt checkpoint stops here, before Ray starts
        print(f"resuming {run_dir}: " + "; ".join(f"{m} {found[m]}" for m in configs))
    else:
        configs = run_configs(args)  # every option is checked before the heavy imports below (Ray, torch)
        first = next(iter(configs.values()))
        name = first.run.name or time.strftime("run-%Y%m%d-%H%M%S")
        run_dir = Path(first.run.output_dir).expanduser().resolve() / name
        print(f"run {run_dir}")
    first = next(iter(configs.values()))
    orders = f" (and {first.run.orders - 1} seeded orders)" if first.run.orders > 1 else ""
    print(f"  methods: {', '.join(configs)}\n  order: {' -> '.join(first.run.languages)}{orders}\n"
          f"  TensorBoard (live): tensorboard --logdir {run_dir / 'tensorboard'}")
    ray_log = None if args.verbose else run_dir / "ray.log"
    if ray_log is not None:
        print(f"  Ray's log: {ray_log} (--verbose shows it here)")
    from cll_ray.console import ProgressConsole, compact_table
    from cll_ray.distributed.driver import run_experiment
    from cll_ray.report import build_report, collect_results
    from cll_ray.report.builder import record_run_info

    console = ProgressConsole(progress=not args.quiet)
    try:  # tqdm bars (data generation) write carriage returns: only on a terminal
        run_experiment(configs, run_dir, progress=not args.quiet and sys.stderr.isatty(), num_cpus=args.num_cpus,
                       console=console, ray_log=ray_log)
    finally:
        console.close()
    record_run_info(run_dir, time.time() - started)  # the report shows it, with the versions
    report = build_report(run_dir)  # report.md has the full table, heatmaps and curves
    print(f"\n{compact_table(collect_results(run_dir))}\n\nreport: {report}")
    print(f"wall time: {time.time() - started:.0f}s")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from cll_ray.config import ConfigError
    from cll_ray.distributed.sweep_report import build_sweep_report
    from cll_ray.distributed.tuner import run_sweep

    started = time.time()
    if args.resume:
        sweep_dir = Path(args.resume).expanduser().resolve()
        print(f"resuming sweep {sweep_dir}")
    else:
        if not args.space:
            raise ConfigError("cll-ray tune needs a search space (tune_spaces/*.yaml) or --resume SWEEP_DIR")
        from cll_ray.sweep import load_space

        if args.workers is not None:
            args.overrides = [*args.overrides, f"run.num_workers={args.workers}"]
        cfg = load_space(args.space).base_config(args.overrides)
        name = cfg.run.name or time.strftime("sweep-%Y%m%d-%H%M%S")
        sweep_dir = Path(cfg.run.output_dir).expanduser().resolve() / name
        print(f"sweep {sweep_dir}: {args.space}, {args.samples} samples")
    grid = run_sweep(args.space, sweep_dir, overrides=list(args.overrides), samples=args.samples, orders=args.orders,
                     concurrent=args.concurrent, resume=bool(args.resume), num_cpus=args.num_cpus,
                     progress=not args.quiet)
    report, table = build_sweep_report(sweep_dir)
    print(f"\n{len(grid)} trials, {grid.num_errors} errors\n\n{table}\n\nreport: {report}")
    print(f"wall time: {time.time() - started:.0f}s")
    return 0 if grid.num_errors == 0 else 1


def _bench(args: argparse.Namespace) -> int:
    from cll_ray.bench import main as bench_main

    return bench_main(args)


def _report(args: argparse.Namespace) -> int:
    from cll_ray.distributed.sweep_report import build_sweep_report, is_sweep_dir

    if len(args.run_dirs) == 1 and is_sweep_dir(args.run_dirs[0]):
        report, table = build_sweep_report(args.run_dirs[0], args.out)
        print(f"{table}\n\nreport: {report}")
        return 0

    from cll_ray.report import run as report_run

    return report_run(args)


def _data_import(args: argparse.Namespace) -> int:
    from cll_ray.importers import import_coco36, import_xm3600, parse_carve

    langs = args.langs.split(",") if args.langs else None
    common = {"langs": langs, "skip_bad": args.skip_bad, "embed_images": args.embed_images, "progress": True,
              "overwrite": args.overwrite}
    if args.source == "xm3600":
        report = import_xm3600(args.src, args.images, args.out, carve=parse_carve(args.carve), **common)
    else:
        if args.carve:
            raise ValueError("--carve is for xm3600 only: COCO-36 comes with its train/val/test splits")
        report = import_coco36(args.src, args.images, args.out, **common)
    print(report.format())
    return 0


def _data_add_language(args: argparse.Namespace) -> int:
    from cll_ray.importers import add_language

    report = add_language(args.dataset, args.lang, args.captions, out=args.out, in_place=args.in_place,
                          skip_bad=args.skip_bad, overwrite=args.overwrite, ignore_columns=args.ignore_columns)
    for warning in report.warnings:
        print(f"cll-ray: warning: {warning}", file=sys.stderr)
    print(report.format())
    return 0


def _export(args: argparse.Namespace) -> int:
    from cll_ray.export import export_model

    info = export_model(args.run_dir, args.out, task=args.task, method=args.method)
    print(f"exported {info['method']} after task {info['task']} ({info['lang']}) to {args.out}: "
          f"{len(info['languages'])} languages ({', '.join(info['languages'])}), vocabulary {info['vocab_size']}")
    return 0


def _nonblank(texts: list[str], what: str) -> list[str]:
    blank = [i for i, t in enumerate(texts, 1) if not t.strip()]
    if blank:
        raise ValueError(f"{what} {', '.join(map(str, blank))} of {len(texts)} is empty; expected text to encode")
    return texts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _embed(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from cll_ray.exported import ExportedModel
    from cll_ray.io import atomic_write_with

    _nonblank(args.texts, "text")
    if args.format == "npy" and not args.out:
        raise ValueError("--format npy needs --out FILE.npy")
    model = ExportedModel(args.model, device=args.device)
    _warn_language(model, args.lang)
    vectors = model.encode_text(args.texts, normalize=not args.no_normalize, lang=args.lang)
    if args.format == "npy":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the temporary name
                np.save(f, vectors, allow_pickle=False)

        atomic_write_with(args.out, write)
        print(f"{args.out}: {vectors.shape[0]} x {vectors.shape[1]} float32")
    else:
        print(json.dumps({"model": str(args.model), "lang": args.lang, "dim": int(vectors.shape[1]),
                          "normalized": not args.no_normalize, "texts": args.texts,
                          "embeddings": vectors.astype(np.float64).round(6).tolist()}, ensure_ascii=False))
    return 0


def _search(args: argparse.Namespace) -> int:
    import json

    from cll_ray.exported import ExportedModel

    _nonblank(args.queries, "query")
    model = ExportedModel(args.model, device=args.device)
    _warn_language(model, args.lang)
    ranked = model.search(args.queries, args.images, top_k=args.top_k, lang=args.lang)
    if args.json:
        print(json.dumps([{"query": q, "results": [{"path": p, "score": round(s, 6)} for p, s in hits]}
                          for q, hits in zip(args.queries, ranked)], ensure_ascii=False))
        return 0
    for query, hits in zip(args.queries, ranked):
        print(query)
        for rank, (path, score) in enumerate(hits, 1):
            print(f"  {rank:>3}. {score:.4f}  {path}")
    return 0


def _warn_language(model, lang: str | None) -> None:
    """The model scores any text: without --lang, or in a language it never learned, a high score misleads."""
    if lang is None and model.encoder is None:  # an mla model refuses a text without its language
        print(f"cll-ray: warning: no --lang given; this model learned {', '.join(model.languages)}, and "
              "scores text in any other language as confidently", file=sys.stderr)
    elif lang is not None and lang not in model.languages:
        if model.encoder is not None:
            model.check_language(lang)  # an mla model routes by language: an unlearned one is an error
        print(f"cll-ray: warning: language {lang!r} was not learned by this model (it knows "
              f"{', '.join(model.languages)}); its scores are not to be trusted", file=sys.stderr)


def _add_model_commands(sub) -> None:
    """export / embed / search: a run's model out, and using it."""
    exp = _command(sub, "export", "export a run's model after task N as an open_clip-loadable folder",
                   "cll-ray export runs/my-run --task 3 --out models/after-de")
    exp.add_argument("run_dir", help="a run directory written by `cll-ray run`")
    exp.add_argument("--task", type=int, help="1-based task number (default: the last checkpointed task)")
    exp.add_argument("--out", required=True, help="output folder: new, empty or an earlier export (replaced atomically)")
    exp.add_argument("--method", help="which method of the run (needed when it has several)")
    exp.set_defaults(func=_export)

    emb = _command(sub, "embed", "print text embeddings from an exported model",
                   "cll-ray embed --model models/after-de --lang de \"ein roter Würfel\" \"ein blauer Ball\"")
    emb.add_argument("texts", nargs="+", help="the texts to embed")
    emb.add_argument("--model", required=True, help="a folder written by `cll-ray export`")
    emb.add_argument("--lang", help="the texts' language; a warning without it or if the model has not learned it "
                     "(an mla model needs a learned one: it picks the path and the acquirers)")
    emb.add_argument("--format", choices=("json", "npy"), default="json",
                     help="json on stdout (default) or a .npy file (--out)")
    emb.add_argument("--out", help="with --format npy: the .npy file to write")
    emb.add_argument("--no-normalize", action="store_true", help="raw embeddings instead of L2-normalized")
    emb.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    emb.set_defaults(func=_embed)

    sea = _command(sub, "search", "rank a folder of images by a text query in any learned language",
                   "cll-ray search --model models/after-de --images photos/ --lang de --top-k 3 \"ein roter Würfel\"")
    sea.add_argument("queries", nargs="+", help="text queries; each gets its own ranking")
    sea.add_argument("--model", required=True, help="a folder written by `cll-ray export`")
    sea.add_argument("--images", required=True, help="folder of images (searched recursively)")
    sea.add_argument("--top-k", type=_positive_int, default=5, help="results per query (at least 1)")
    sea.add_argument("--lang", help="the queries' language; a warning without it or if the model has not learned it "
                     "(an mla model needs a learned one: it picks the path and the acquirers)")
    sea.add_argument("--json", action="store_true", help="print JSON instead of a ranked list")
    sea.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    sea.set_defaults(func=_search)


def _add_import_commands(data_sub) -> None:
    """data import / data add-language: real data into the canonical layout."""
    imp = _command(data_sub, "import", "import XM3600 or COCO-36 into the canonical layout",
                   "cll-ray data import xm3600 --src captions.jsonl --images xm3600/images --out data/xm3600 "
                   "--carve train=0.8,val=0.1")
    imp.add_argument("source", choices=("xm3600", "coco36"), help="which dataset the files are")
    imp.add_argument("--src", required=True,
                     help="xm3600: captions.jsonl; coco36: the folder with triplet/ and annotations/")
    imp.add_argument("--images", required=True, help="the image folder (xm3600: <key>.jpg; coco36: the COCO root)")
    imp.add_argument("--out", required=True, help="dataset folder to write (atomically); new or empty, "
                     "unless --overwrite")
    imp.add_argument("--overwrite", action="store_true", help="replace the dataset an earlier import wrote to "
                     "--out: only the files its manifest lists; other files there stay")
    imp.add_argument("--langs", help="comma-separated languages (default: all in the source)")
    imp.add_argument("--skip-bad", action="store_true", help="leave bad records out (reported) instead of stopping")
    imp.add_argument("--embed-images", action="store_true",
                     help="store image bytes in images.parquet (self-contained) instead of linking the folder")
    imp.add_argument("--carve", help="xm3600 only: train/val fractions for experiments, e.g. train=0.8,val=0.1 "
                     "(default: everything is test, as in the benchmark)")
    imp.set_defaults(func=_data_import)

    add = _command(data_sub, "add-language", "add your own language's captions to a dataset",
                   "cll-ray data add-language data/xm3600 --lang sw --captions sw.csv --out data/xm3600-sw")
    add.add_argument("dataset", help="a dataset folder in the canonical layout")
    add.add_argument("--lang", required=True, help="language code, e.g. sw")
    add.add_argument("--captions", required=True, help="CSV, TSV, JSONL or Parquet: image_id, caption[, caption_en, split]")
    add.add_argument("--out", help="write the result as a new dataset here; it shares the unchanged files with "
                     "DATASET by hard link, and DATASET stays as it is")
    add.add_argument("--in-place", action="store_true", help="change DATASET itself instead (never the SynthXM "
                     "cache that default runs use)")
    add.add_argument("--skip-bad", action="store_true", help="leave bad rows out (reported) instead of stopping")
    add.add_argument("--overwrite", action="store_true", help="replace the language if the dataset has it")
    add.add_argument("--ignore-columns", action="store_true", help="ignore unknown columns (named in a warning) "
                     "instead of stopping")
    add.set_defaults(func=_data_add_language)


def _command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose help ends with an example."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cll-ray")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _methods_help() -> str:
    from cll_ray.config import method_presets

    return ("comma-separated method presets (cll_ray/configs/methods.yaml), or all; default: the method.name the "
            f"config or an override gives, else {DEFAULT_METHODS}. Presets: {', '.join(method_presets())}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cll-ray", description="Continual language learning for CLIP.",
                                     epilog="example:\n  cll-ray run --langs en,fr,de --methods cll_clip_teir\n"
                                     "run `cll-ray COMMAND --help` for a command's options",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cll-ray {_version()}",
                        help="print the installed cll-ray version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = _command(sub, "data", "datasets in the canonical layout", "cll-ray data synth --size tiny")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = _command(data_sub, "synth", "generate the SynthXM benchmark and print its summary",
                     "cll-ray data synth --size small --langs en,fr,de")
    synth.add_argument("--out", help="output folder (default: the cache folder used by runs)")
    synth.add_argument("--size", default="default", help="tiny | small | default | large")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--langs", help="comma-separated language codes (default: all 36)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset of another config")
    synth.set_defaults(func=_synth)
    _add_import_commands(data_sub)

    pre = _command(sub, "pretrain", "train (or load from cache) the English base model on SynthXM",
                   "cll-ray pretrain --size small --out models/base-small")
    pre.add_argument("--size", default="default", help="SynthXM size whose pretraining split is used")
    pre.add_argument("--data", help="a dataset folder instead of SynthXM")
    pre.add_argument("--data-seed", type=int, default=0, help="SynthXM generator seed (default 0)")
    pre.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    pre.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    pre.add_argument("--out", help="also write the model to this folder")
    pre.set_defaults(func=_pretrain)

    run = _command(sub, "run", "run a continual-language-learning sequence and print the CL table",
                   "cll-ray run --langs en,fr,de --methods cll_clip,cll_clip_teir train.lr=1e-3\n"
                   "  cll-ray run --dry-run --langs all --order order222   (what it would do; trains nothing)")
    run.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=3e-5")
    run.add_argument("--config", help="experiment YAML (a small diff over the defaults)")
    run.add_argument("--methods", default=None, help=_methods_help())
    run.add_argument("--langs", help="comma-separated languages, or all (the 36 XM3600 ones); default: run.languages")
    run.add_argument("--order", help="given (default) | alphabetical | order<seed>, e.g. order222 (the paper's)")
    run.add_argument("--orders", type=int, help="K task orders per method: the given one, then K-1 seeded ones, "
                     "English first (run.orders); the report shows mean ± std over them")
    run.add_argument("--workers", type=int, help="Ray Train workers per method (run.num_workers)")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (ignored on a cluster)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last completed task")
    run.add_argument("--quiet", action="store_true", help="no progress display (result lines and the table stay)")
    run.add_argument("--dry-run", action="store_true", help="print each method's resolved config, the task order, "
                     "the vocabulary each task adds and the Ray resources each method asks for; trains nothing and "
                     "starts no Ray (it may generate the dataset and train the per-language tokenizers, cached for "
                     "the run)")
    run.add_argument("--verbose", action="store_true", help="also show Ray's own log lines and the workers' output "
                     "(by default they go to RUN_DIR/ray.log and Ray's session logs)")
    run.set_defaults(func=_run)

    tun = _command(sub, "tune", "sweep a search space across seeded task orders (Ray Tune + HyperOpt + ASHA)",
                   "cll-ray tune tune_spaces/teir.yaml --samples 8 --orders 2 data.synthxm_size=small")
    tun.add_argument("space", nargs="?", help="a search space, e.g. tune_spaces/teir.yaml")
    tun.add_argument("overrides", nargs="*", help="dotted config overrides for every trial, e.g. data.synthxm_size=small")
    tun.add_argument("--samples", type=int, default=20, help="trials (default 20)")
    tun.add_argument("--orders", type=int, help="task orders each trial runs (default: the space's `orders`)")
    tun.add_argument("--workers", type=int, help="Ray Train workers per trial (run.num_workers, at least 1)")
    tun.add_argument("--concurrent", type=int,
                     help="trials at once (default: 8 on an autoscaling cluster, which asks the autoscaler for "
                     "their workers; elsewhere as many as the cluster's CPUs and GPUs fit)")
    tun.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (ignored on a cluster)")
    tun.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep; finished trials are kept")
    tun.add_argument("--quiet", action="store_true", help="no progress output")
    tun.set_defaults(func=_tune)

    from cll_ray.report import add_arguments as report_arguments

    rep = _command(sub, "report", "rebuild report.md and plots from run directories, or from one sweep "
                   "directory; --table prints the README's results table", "cll-ray report results/default --table")
    report_arguments(rep).set_defaults(func=_report)
    _add_model_commands(sub)

    from cll_ray.bench import add_arguments as bench_arguments

    ben = _command(sub, "bench", "time cll-ray's training step against the reference-equivalent step (transformers' "
                   "CLIP text model, padding to 77, dense AdamW) on the same inputs, with FLOP/s, MFU, memory, the "
                   "step at 50k and 400k embedding rows, evaluation throughput and the paper protocol's projected "
                   "time", "cll-ray bench --quick\n  cll-ray bench --out results/bench/cpu.json\n"
                   "  cll-ray bench --show results/bench/cpu.json")
    bench_arguments(ben).set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may come after options too (`tune SPACE --samples 4 train.lr=1e-3`): argparse leaves them
    misplaced = [a for a in extra if "=" in a and not a.startswith("-")]
    if len(misplaced) != len(extra) or (misplaced and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in misplaced or not hasattr(args, 'overrides'))}")
    if misplaced:
        args.overrides = [*args.overrides, *misplaced]
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError) as e:  # bad input: one line naming the file or key, exit code 2
        print(f"cll-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

