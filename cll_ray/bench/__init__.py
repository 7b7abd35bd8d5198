"""`cll-ray bench`: cll-ray's training step against the reference-equivalent one, measured side by side.

``measure`` runs every measurement in one process on the same inputs, ``reference`` builds the
reference-equivalent step (transformers' CLIP text model), ``table`` prints a record as the README shows it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from cll_ray.io import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 timed steps, fewer evaluation captions: "
                        "under 2 minutes on a laptop CPU (what CI runs)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument("--arch", help="the open_clip architecture of the text tower (default ViT-B-16)")
    parser.add_argument("--batch-size", type=int, help="captions per step (default 128; --quick 32)")
    parser.add_argument("--out", help="also write the record as JSON (e.g. results/bench/cpu.json)")
    parser.add_argument("--show", metavar="JSON", help="print the tables of a saved record and exit (measures nothing)")
    return parser


def main(args: argparse.Namespace) -> int:
    from cll_ray.bench.table import bench_tables

    if args.show:
        path = Path(args.show)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a bench record (JSON error at line {e.lineno}: {e.msg})") from e
        print(bench_tables(record))
        return 0

    import torch

    from cll_ray.bench.measure import QUICK, BenchSettings, run_bench

    if args.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got '{args.device}'")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    settings = QUICK if args.quick else BenchSettings()
    if args.arch:
        settings = replace(settings, arch=args.arch)
    if args.batch_size is not None:
        if args.batch_size < 2:
            raise ValueError(f"--batch-size must be at least 2, got {args.batch_size}")
        settings = replace(settings, batch_size=args.batch_size)
    record = {**run_bench(settings, device, progress=lambda line: print(line, flush=True)),
              "settings": asdict(settings), "quick": bool(args.quick)}
    print()
    print(bench_tables(record))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
        print(f"\nwritten: {args.out}")
    return 0
