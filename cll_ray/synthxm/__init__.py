"""SynthXM: a procedural multilingual image-caption benchmark in the shape of COCO-36 / XM3600.

See /work/shared/spec/synthxm.md (the spec) and `captions.py` (the lexicon/template format).
"""

from .captions import Lexicon, load_lexicon
from .generate import GENERATOR_VERSION, SIZES, SynthXMSize, generate_synthxm, read_manifest
from .scenes import canonical_key
from .summary import format_summary, synthxm_summary

__all__ = [
    "GENERATOR_VERSION",
    "SIZES",
    "Lexicon",
    "SynthXMSize",
    "canonical_key",
    "format_summary",
    "generate_synthxm",
    "load_lexicon",
    "read_manifest",
    "synthxm_summary",
]
