"""Continual-learning methods, each a small object with explicit hooks (see ``base.Method``)."""

from __future__ import annotations

from cll_ray.config import MethodConfig
from cll_ray.methods.adapters import LoRA, MLAAdapter
from cll_ray.methods.base import Method
from cll_ray.methods.cll_clip import CLLCLIP
from cll_ray.methods.ewc import OnlineEWC
from cll_ray.methods.finetune import FinetuneAll
from cll_ray.methods.joint import Joint
from cll_ray.methods.lwf import LwF
from cll_ray.methods.mla import MLA, MLAJoint
from cll_ray.methods.replay import DarkExperienceReplay, ExperienceReplay

# method.kind -> class; presets (configs/methods.yaml) pick a kind and set its hyper-parameters
METHODS: dict[str, type[Method]] = {
    "cll_clip": CLLCLIP,
    "finetune_all": FinetuneAll,
    "oewc": OnlineEWC,
    "er": ExperienceReplay,
    "der": DarkExperienceReplay,
    "lwf": LwF,
    "lora": LoRA,
    "mla_adapter": MLAAdapter,
    "mla": MLA,
    "mla_joint": MLAJoint,
    "joint": Joint,
}


def build_method(cfg: MethodConfig) -> Method:
    if cfg.kind not in METHODS:
        raise ValueError(f"method {cfg.name}: unknown method.kind '{cfg.kind}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[cfg.kind](cfg)


__all__ = ["METHODS", "Method", "build_method"]
