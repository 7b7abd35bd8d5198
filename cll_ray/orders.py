"""Task orders: named orders of language codes, generated the way the reference generates them."""

from __future__ import annotations

import random

from cll_ray.layout import XM3600_LANGUAGES


def seeded_order(languages: list[str], seed: int, first: str = "en") -> list[str]:
    """``random.seed(seed); random.shuffle(sorted(languages))``, then ``first`` moved to the front.

    With the 36 XM3600 languages and seed 222 this is the paper's ``order222`` (method.md §5.2).
    """
    order = sorted(languages)
    random.seed(seed)
    random.shuffle(order)
    if first in order:
        order.remove(first)
        order.insert(0, first)
    return order


def resolve_order(langs: str, order: str | None = None) -> list[str]:
    """``--langs`` (comma list or ``all``) and ``--order`` (``given``, ``alphabetical``, ``order<seed>``)."""
    languages = list(XM3600_LANGUAGES) if langs == "all" else [code.strip() for code in langs.split(",") if code.strip()]
    if not languages:
        raise ValueError("--langs: no language given")
    if order in (None, "", "given"):
        return languages
    if order == "alphabetical":
        return sorted(languages, key=lambda code: (code != "en", code))
    if order.startswith("order") and order[5:].isdigit():
        return seeded_order(languages, int(order[5:]))
    raise ValueError(f"--order: expected given, alphabetical or order<seed> (e.g. order222), got '{order}'")
