"""Scene sampling for SynthXM: 1-3 objects, their attributes, places and one spatial relation.

Coordinates are fractions of the image side, origin top left, y pointing down. Scenes are sampled
sequentially in the parent process with `random.Random` (cheap: ~20 us per scene) so that uniqueness of
the canonical key inside a split can be enforced globally; only rendering is parallel.
"""

from __future__ import annotations

import json
import random

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
OBJECT_SIZES = ("small", "large")
# 3x3 grid of coarse places, row-major (top row first): the names used by lexicons.
PLACES = ("top_left", "top", "top_right", "left", "center", "right", "bottom_left", "bottom", "bottom_right")
RELATIONS = ("left_of", "right_of", "above", "below")

COUNT_WEIGHTS = (0.2, 0.4, 0.4)  # P(1 object), P(2), P(3): one-object scenes are the hardest, keep them rarer
RADIUS = {"small": 0.085, "large": 0.165}  # object "radius" as a fraction of the image side
EDGE = 0.035  # keep bounding circles this far inside the image (star/triangle tips reach 1.15 r)
GAP = 0.03  # minimum free space between two objects' bounding circles
CELL_MARGIN = 0.03  # one-object scenes: centre this far inside its grid cell, so the place is unambiguous
MIN_DOMINANCE = 1.5  # relation axis offset must be >= 1.5x the other axis offset (no "diagonal" relations)


def _place_of(x: float, y: float) -> str:
    col = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    return PLACES[3 * row + col]


def _relation(a: dict, b: dict) -> str | None:
    """The relation "a REL b" if one axis clearly dominates, else None (resample)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) >= MIN_DOMINANCE * abs(dy):
        return "left_of" if dx < 0 else "right_of"
    if abs(dy) >= MIN_DOMINANCE * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def _free(rng: random.Random, r: float, others: list[dict]) -> tuple[float, float] | None:
    """A centre for an object of radius r that keeps GAP to all `others` (None after 50 tries)."""
    lo, hi = r + EDGE, 1.0 - r - EDGE
    for _ in range(50):
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if all((x - o["x"]) ** 2 + (y - o["y"]) ** 2 >= (r + o["r"] + GAP) ** 2 for o in others):
            return x, y
    return None


def sample_scene(rng: random.Random) -> dict:
    """One random scene: {"objects": [...], "relation": {...} | None, "background": [r,g,b], "seed": int}."""
    n = rng.choices((1, 2, 3), COUNT_WEIGHTS)[0]
    while True:
        descs: list[tuple[str, str, str]] = []
        while len(descs) < n:  # distinct (size, colour, shape) inside one scene, so captions are unambiguous
            d = (rng.choice(OBJECT_SIZES), rng.choice(COLORS), rng.choice(SHAPES))
            if d not in descs:
                descs.append(d)
        objects = [
            {"shape": s, "color": c, "size": z, "r": RADIUS[z] * rng.uniform(0.92, 1.08)} for z, c, s in descs
        ]
        if n == 1:
            o = objects[0]
            place = rng.randrange(9)
            row, col = divmod(place, 3)
            for axis, k in (("x", col), ("y", row)):
                lo = max(o["r"] + EDGE, k / 3 + CELL_MARGIN)
                hi = min(1 - o["r"] - EDGE, (k + 1) / 3 - CELL_MARGIN)
                o[axis] = rng.uniform(lo, hi)
            relation = None
            break
        placed: list[dict] = []
        for o in objects:
            xy = _free(rng, o["r"], placed)
            if xy is None:
                break
            o["x"], o["y"] = xy
            placed.append(o)
        if len(placed) < n:
            continue
        rel = _relation(objects[0], objects[1])
        if rel is not None:
            relation = {"subject": 0, "object": 1, "relation": rel}
            break
    for o in objects:
        o["x"], o["y"], o["r"] = round(o["x"], 4), round(o["y"], 4), round(o["r"], 4)
        o["place"] = _place_of(o["x"], o["y"])
    background = [rng.randrange(256) for _ in range(3)]  # hue source only: the renderer desaturates it
    return {"objects": objects, "relation": relation, "background": background, "seed": rng.getrandbits(31)}


def _desc(o: dict) -> str:
    return f"{o['size']} {o['color']} {o['shape']}"


def canonical_key(scene: dict) -> tuple:
    """What a caption can tell apart: count, attributes, place (1 object) or relation (+ third object).

    "A right of B" is normalised to "B left of A" (and below to above): they are the same description.
    """
    objs = scene["objects"]
    if len(objs) == 1:
        return (1, _desc(objs[0]), objs[0]["place"])
    rel = scene["relation"]
    a, b = _desc(objs[rel["subject"]]), _desc(objs[rel["object"]])
    key = {
        "left_of": (a, "left_of", b),
        "right_of": (b, "left_of", a),
        "above": (a, "above", b),
        "below": (b, "above", a),
    }[rel["relation"]]
    rest = tuple(sorted(_desc(o) for i, o in enumerate(objs) if i not in (rel["subject"], rel["object"])))
    return (len(objs), *key, *rest)


def sample_split(
    rng: random.Random, n: int, unique: bool = True, avoid: set | None = None, avoid_tries: int = 30
) -> tuple[list[dict], set]:
    """n scenes; with `unique`, no two share a canonical key, and keys in `avoid` are rejected while
    feasible (after `avoid_tries` rejections in a row we accept an overlap rather than loop forever)."""
    scenes: list[dict] = []
    keys: set = set()
    avoid = avoid or set()
    while len(scenes) < n:
        for attempt in range(10_000):
            s = sample_scene(rng)
            if not unique:
                break
            k = canonical_key(s)
            if k in keys or (k in avoid and attempt < avoid_tries):
                continue
            keys.add(k)
            break
        else:  # pragma: no cover - the key space (>30k two-object keys) is far larger than any split
            raise RuntimeError("could not sample a scene with a new canonical key")
        scenes.append(s)
    return scenes, keys


def scene_json(scene: dict) -> str:
    """Deterministic compact JSON of a scene (sorted keys)."""
    return json.dumps(scene, sort_keys=True, separators=(",", ":"))
