"""Continual-learning methods, each a small object with explicit hooks (see ``base.Method``)."""

from __future__ import annotations

from cll_ray.config import MethodConfig
from cll_ray.methods.base import Method
from cll_ray.methods.cll_clip import CLLCLIP

# preset name -> class; presets (configs/methods.yaml) only set hyper-parameters of these classes
METHODS: dict[str, type[Method]] = {
    "cll_clip": CLLCLIP,
    "cll_clip_teir": CLLCLIP,
}


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method '{cfg.name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[cfg.name](cfg)


__all__ = ["METHODS", "Method", "build_method"]
