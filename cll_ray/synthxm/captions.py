"""Lexicons and the tiny template engine that turns a SynthXM scene into a caption in any language.

Lexicon file format (`lexicons/<code>.yaml`, one per language; data only):

    lang, name, script, source   metadata; `source` says where the words come from
    spaces: false                optional: the language writes no spaces (zh, ja, th); checked by the tests
    shapes:  {circle: ENTRY, ...}        8 shapes; an entry may carry `g:` (its gender / noun class)
    colors:  {red: ENTRY, ...}           8 colours
    sizes:   {small: ENTRY, large: ENTRY}
    numbers: {1: .., 2: .., 3: ..}       the count words in the form the templates use (tests check them)
    words:   {art: ENTRY, ...}           any other word a template or `np` uses (articles, "one", verbs...)
    np:      TEMPLATE                    how one object is said, e.g. "{art} {size} {shape} {color}"
    places:  {top_left: ENTRY, ...}      9 coarse places (3x3 grid), used for one-object scenes
    relations: {left_of: ENTRY, ...}     "A is REL B"; the entry is a template that mentions {B}
    templates: [{1: T, 2: T, 3: T}, ...] caption templates per object count; the k-th template of every
                                         language says the same thing as the k-th English one

An ENTRY is either a string or a mapping from *form keys* to strings. A form key is "base" or features
joined by dots ("gen", "f", "dat.m", "obl"). A slot asks for features (its own, plus those inherited from
the enclosing slot, plus the gender `g` of the object it is about), and the entry's form whose features are
all requested wins, case-like features counting before the gender (so "dat.m" > "dat" > "m" > "base").

A TEMPLATE is text with slots `{name}` or `{name:feat.feat}`:
    {A} {B} {C}   the object noun phrase (`np`) of the relation's subject, its reference object, and the
                  third object; e.g. {B:gen} renders `np` with the genitive forms of its words
    {rel} {place} the relation phrase (with {B} inside) / the place of A
    {size} {color} {shape}   (inside `np`) the object's words
    {word}        an entry of `words`, agreeing with A; `{word:@C}` agrees with C instead
Runs of spaces are collapsed and the result stripped, so an empty form (e.g. a "bare" article) is harmless.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from .scenes import COLORS, OBJECT_SIZES, PLACES, RELATIONS, SHAPES

LEXICON_DIR = Path(__file__).parent / "lexicons"
SLOT = re.compile(r"\{([A-Za-z_]\w*)(?::([\w.@]+))?\}")
SPACES = re.compile(r"\s{2,}")
OBJECT_SLOTS = ("A", "B", "C")


def _compile(template: str) -> list:
    """Template -> [literal, (name, features, agree_with), literal, ...]."""
    parts: list = []
    pos = 0
    for m in SLOT.finditer(template):
        parts.append(template[pos : m.start()])
        feats, agree = [], None
        for f in (m.group(2) or "").split("."):
            if f.startswith("@"):
                agree = f[1:]
            elif f:
                feats.append(f)
        parts.append((m.group(1), frozenset(feats), agree))
        pos = m.end()
    parts.append(template[pos:])
    if any("{" in p or "}" in p for p in parts if isinstance(p, str)):
        raise ValueError(f"malformed template {template!r}")
    return parts


def select_form(entry, feats: frozenset, gender: str | None):
    """The form of `entry` matching the requested features best (see the module docstring)."""
    if not isinstance(entry, dict):
        return entry
    best, best_score = None, None
    for key, value in entry.items():
        if key == "g":
            continue
        fs = () if key == "base" else tuple(key.split("."))
        if all(f in feats or f == gender for f in fs):
            score = (sum(f != gender for f in fs), gender in fs)
            if best_score is None or score > best_score:
                best, best_score = value, score
    if best is None:
        raise KeyError(f"no form of {entry!r} for features {sorted(feats)} gender {gender!r}")
    return best


class Lexicon:
    """One language's words and templates, with cached rendering of noun and relation phrases."""

    def __init__(self, data: dict):
        self.data = data
        self.code = str(data["lang"])
        self.script = data["script"]
        self.spaces = data.get("spaces", True)
        self._check()
        self.np = data["np"]
        self.templates = [{int(n): _compile(t) for n, t in tpl.items()} for tpl in data["templates"]]
        self._cache: dict = {}

    def _check(self) -> None:
        d = self.data
        for field, names in (
            ("shapes", SHAPES),
            ("colors", COLORS),
            ("sizes", OBJECT_SIZES),
            ("places", PLACES),
            ("relations", RELATIONS),
        ):
            missing = set(names) - set(d.get(field) or {})
            if missing:
                raise ValueError(f"lexicon {self.code}: {field} lacks {sorted(missing)}")
        for k in ("name", "script", "source", "numbers", "np", "templates"):
            if not d.get(k):
                raise ValueError(f"lexicon {self.code}: missing {k!r}")
        for tpl in d["templates"]:
            if sorted(int(n) for n in tpl) != [1, 2, 3]:
                raise ValueError(f"lexicon {self.code}: each template needs forms for 1, 2 and 3 objects")

    def _fill(self, parts: list, objs: dict, feats: frozenset, obj_of_np: tuple | None) -> str:
        out = []
        for p in parts:
            if isinstance(p, str):
                out.append(p)
                continue
            name, own, agree = p
            f = feats | own
            if name in OBJECT_SLOTS:
                out.append(self.noun_phrase(objs[name], own))
            elif name == "rel":
                rel = select_form(self.data["relations"][objs["rel"]], own, None)
                out.append(self._fill(_compile_cached(rel), objs, own, None))
            elif name == "place":
                place = select_form(self.data["places"][objs["place"]], own, None)
                out.append(self._fill(_compile_cached(place), objs, own, None))
            elif obj_of_np is not None and name in ("size", "color", "shape"):
                size, color, shape = obj_of_np
                table = {"size": self.data["sizes"][size], "color": self.data["colors"][color]}
                table["shape"] = self.data["shapes"][shape]
                out.append(select_form(table[name], f, self.gender(shape)))
            elif name in (self.data.get("words") or {}):
                target = obj_of_np if (obj_of_np is not None and agree is None) else objs.get(agree or "A")
                g = self.gender(target[2]) if target else None
                out.append(select_form(self.data["words"][name], f, g))
            else:
                raise KeyError(f"lexicon {self.code}: unknown slot {{{name}}}")
        return "".join(out)

    def gender(self, shape: str) -> str | None:
        entry = self.data["shapes"][shape]
        return entry.get("g") if isinstance(entry, dict) else None

    def noun_phrase(self, obj: tuple, feats: frozenset = frozenset()) -> str:
        """`np` for obj = (size, colour, shape) with the requested features (e.g. {"gen"})."""
        key = ("np", obj, feats)
        if key not in self._cache:
            np_entry = select_form(self.np, feats, self.gender(obj[2]))
            self._cache[key] = self._fill(_compile_cached(np_entry), {}, feats, obj)
        return self._cache[key]

    def caption(self, objects: list[tuple], relation: str | None, place: str | None, template: int) -> str:
        """Caption of a scene given as object descriptions [(size, colour, shape)] ordered
        (subject, reference, third), its relation (>= 2 objects) or the place (1 object)."""
        objs = dict(zip(OBJECT_SLOTS, objects))
        objs.update(rel=relation, place=place)
        text = self._fill(self.templates[template][len(objects)], objs, frozenset(), None)
        return SPACES.sub(" ", text).strip()


@functools.cache
def _compile_cached(template: str) -> list:
    return _compile(template)


@functools.cache
def load_lexicon(code: str) -> Lexicon:
    """The lexicon of language `code` from the package data."""
    path = LEXICON_DIR / f"{code}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no SynthXM lexicon for language {code!r} ({path})")
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # C loader: 10x faster
    if str(data.get("lang")) != code:
        raise ValueError(f"{path}: lang field {data.get('lang')!r} != {code!r}")
    return Lexicon(data)


def scene_parts(scene: dict) -> tuple[list[tuple], str | None, str | None]:
    """(objects as (size, colour, shape) in subject/reference/third order, relation, place) of a scene."""
    objs = scene["objects"]
    desc = [(o["size"], o["color"], o["shape"]) for o in objs]
    rel = scene.get("relation")
    if rel is None:
        return desc, None, objs[0]["place"]
    i, j = rel["subject"], rel["object"]
    ordered = [desc[i], desc[j]] + [d for k, d in enumerate(desc) if k not in (i, j)]
    return ordered, rel["relation"], None


def template_order(scene: dict, n_templates: int) -> list[int]:
    """Which template each caption_index uses: a permutation of all templates, chosen by the scene seed."""
    order = list(range(n_templates))
    s = scene["seed"]
    for i in range(n_templates - 1, 0, -1):  # Fisher-Yates driven by the seed's digits
        s, j = divmod(s, i + 1)
        order[i], order[j] = order[j], order[i]
    return order
