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
    languages = list(XM3600_LANGUAGES) if langs == "all" else langs.split(",")
    odd = [code for code in languages if not code or code != "".join(code.split())]
    if not langs.strip() or odd:
        # a space or an empty entry is a typo to point at, not something to guess around (the config checks codes)
        raise ValueError(f"--langs {langs!r}: expected comma-separated language codes without spaces or empty "
                         f"entries, English first (e.g. en,fr,de), or all"
                         + (f"; got {', '.join(repr(c) for c in odd)}" if odd and langs.strip() else ""))
    if order in (None, "", "given"):
        return languages
    if order == "alphabetical":
        return sorted(languages, key=lambda code: (code != "en", code))
    if order.startswith("order") and order[5:].isdigit():
        return seeded_order(languages, int(order[5:]))
    raise ValueError(f"--order: expected given, alphabetical or order<seed> (e.g. order222), got '{order}'")
