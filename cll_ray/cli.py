"""The ``cll-ray`` command line: parses arguments and calls the library, nothing else."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path


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


def _run(args: argparse.Namespace) -> int:
    from cll_ray.checkpoint import save_checkpoint
    from cll_ray.config import load_config, save_config
    from cll_ray.features import load_or_compute_features
    from cll_ray.sequence import (
        cll_ray_home,
        format_cl_table,
        resolve_base,
        resolve_dataset,
        run_sequence,
        write_jsonl,
    )

    methods = args.methods.split(",") if args.methods else [None]
    configs = {m: load_config(args.config, method=m, overrides=args.overrides) for m in methods}
    first = next(iter(configs.values()))
    if args.langs:
        configs = {m: replace(c, run=replace(c.run, languages=tuple(args.langs.split(",")))) for m, c in configs.items()}
    dataset = resolve_dataset(first)
    base = resolve_base(first, dataset)
    features = load_or_compute_features(dataset, base, cll_ray_home(first))
    run_dir = Path(first.run.output_dir).expanduser().resolve() / (first.run.name or time.strftime("run-%Y%m%d-%H%M%S"))
    results = {}
    for cfg in configs.values():
        out = run_dir / cfg.method.name
        save_config(cfg, out / "config.yaml")
        print(f"== {cfg.method.name}: {' -> '.join(cfg.run.languages)}")

        def on_task(learner, row, out=out, cfg=cfg):
            save_checkpoint(out / "checkpoints" / f"task{row['task']:02d}-{row['lang']}.pt", cfg, learner.state_dict(),
                            base.fingerprint)
            cl = row["cl"]["t2i_r1"]
            print(f"  task {row['task'] + 1} {row['lang']}: t2i R@1 per language "
                  f"{' '.join(f'{v:.1f}' for v in row['scores']['t2i_r1'])} | AA {cl['AA']:.1f} F {cl['F']:.1f} "
                  f"({row['seconds']:.0f}s)", flush=True)

        results[cfg.method.name] = run_sequence(cfg, base, features, dataset, progress=not args.quiet, on_task=on_task)
        write_jsonl(out / "results.jsonl", results[cfg.method.name].rows)
    print()
    print(format_cl_table(results))
    print(f"\nrun directory: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cll-ray", description="Continual language learning for CLIP.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets in the canonical layout")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate the SynthXM benchmark and print its summary")
    synth.add_argument("--out", help="output folder (default: the cache folder used by runs)")
    synth.add_argument("--size", default="default", help="tiny | small | default | large")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--langs", help="comma-separated language codes (default: all 36)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset of another config")
    synth.set_defaults(func=_synth)

    pre = sub.add_parser("pretrain", help="train (or load from cache) the English base model on SynthXM")
    pre.add_argument("--size", default="default", help="SynthXM size whose pretraining split is used")
    pre.add_argument("--data", help="a dataset folder instead of SynthXM")
    pre.add_argument("--data-seed", type=int, default=0)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    pre.add_argument("--out", help="also write the model to this folder")
    pre.set_defaults(func=_pretrain)

    run = sub.add_parser("run", help="run a continual-language-learning sequence and print the CL table")
    run.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=3e-5")
    run.add_argument("--config", help="experiment YAML (a small diff over the defaults)")
    run.add_argument("--methods", default="cll_clip,cll_clip_teir", help="comma-separated method presets")
    run.add_argument("--langs", help="comma-separated task order (default: run.languages)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"cll-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

