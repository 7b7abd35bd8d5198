"""Rendering of SynthXM scenes to small RGB PNGs.

Shapes are drawn with PIL at 2x and box-downsampled (cheap anti-aliasing). The background is a desaturated
colour with a gradient, low-frequency blotches and faint pixel noise, so that pixel statistics alone do not
give the answer. PNGs are encoded by hand (Sub filter + zlib level 1): ~4x faster than PIL's encoder,
and byte-deterministic for a given zlib.
"""

from __future__ import annotations

import colorsys
import math
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

# Saturated object colours (plus white/black): far from the desaturated, mid-value backgrounds below.
PALETTE = {
    "red": (220, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 50, 195),
    "orange": (250, 135, 20),
    "white": (248, 248, 248),
    "black": (15, 15, 15),
}
BG_SATURATION = (0.05, 0.3)
BG_VALUE = (0.35, 0.72)
SS = 2  # supersampling factor


def _poly(cx: float, cy: float, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(cx + x, cy + y) for x, y in pts]


def _star(R: float) -> list[tuple[float, float]]:
    out = []
    for k in range(10):
        rad = R * 1.12 if k % 2 == 0 else R * 0.48
        t = -math.pi / 2 + k * math.pi / 5
        out.append((rad * math.cos(t), rad * math.sin(t) + 0.08 * R))
    return out


def _heart(R: float) -> list[tuple[float, float]]:
    s = R / 15.0
    out = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        out.append((x * s, -(y + 2.5) * s))
    return out


def draw_object(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, R: float, fill) -> None:
    """Draw one object centred at (cx, cy) with "radius" R (pixels of the supersampled canvas)."""
    if shape == "circle":
        d.ellipse((cx - R, cy - R, cx + R, cy + R), fill=fill)
    elif shape == "square":
        h = 0.86 * R
        d.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        c = 1.15 * R
        pts = [
            (c * math.cos(t), c * math.sin(t) + 0.2 * R) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        d.polygon(_poly(cx, cy, pts), fill=fill)
    elif shape == "star":
        d.polygon(_poly(cx, cy, _star(R)), fill=fill)
    elif shape == "heart":
        d.polygon(_poly(cx, cy, _heart(R)), fill=fill)
    elif shape == "cross":
        a, w = 0.98 * R, 0.32 * R
        d.rectangle((cx - a, cy - w, cx + a, cy + w), fill=fill)
        d.rectangle((cx - w, cy - a, cx + w, cy + a), fill=fill)
    elif shape == "diamond":
        d.polygon(_poly(cx, cy, [(0, -1.12 * R), (0.78 * R, 0), (0, 1.12 * R), (-0.78 * R, 0)]), fill=fill)
    elif shape == "ring":
        d.ellipse((cx - R, cy - R, cx + R, cy + R), outline=fill, width=max(2, round(0.4 * R)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, hue_rgb, size: int) -> np.ndarray:
    h, _, _ = colorsys.rgb_to_hsv(*(c / 255 for c in hue_rgb))
    s, v = rng.uniform(*BG_SATURATION), rng.uniform(*BG_VALUE)
    base = np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255  # (3,)
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(ang) * t[None, :] + np.sin(ang) * t[:, None]) * rng.uniform(4, 16)  # (S, S)
    coarse = np.clip(rng.normal(128, 12, (4, 4, 3)), 0, 255).astype(np.uint8)
    blotch = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.float32) - 128
    return base + grad[:, :, None] + blotch  # (S, S, 3) float


def render_scene(scene: dict, image_size: int = 64) -> bytes:
    """PNG bytes of the scene; fully determined by the scene dict (its `seed` drives the texture)."""
    rng = np.random.default_rng(scene["seed"])
    bg = np.clip(_background(rng, scene["background"], image_size), 0, 255).astype(np.uint8)
    big = image_size * SS
    im = Image.fromarray(bg).resize((big, big), Image.NEAREST)
    d = ImageDraw.Draw(im)
    for o in scene["objects"]:
        jitter = rng.integers(-12, 13, 3)
        fill = tuple(int(c) for c in np.clip(np.array(PALETTE[o["color"]]) + jitter, 0, 255))
        draw_object(d, o["shape"], o["x"] * big, o["y"] * big, o["r"] * big, fill)
    arr = np.asarray(im.reduce(SS), np.float32)
    arr += rng.normal(0, 1.0, (image_size, image_size, 1)).astype(np.float32)
    return encode_png(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(a: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG (8-bit RGB, Sub filter on every row)."""
    h, w, _ = a.shape
    rows = np.ascontiguousarray(a).reshape(h, w * 3)
    f = rows.copy()
    f[:, 3:] -= rows[:, :-3]  # Sub filter: byte minus the same channel of the left pixel (mod 256)
    raw = np.concatenate([np.ones((h, 1), np.uint8), f], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 1))
        + _chunk(b"IEND", b"")
    )


def render_chunk(args: tuple[list[dict], int]) -> list[bytes]:
    """Pool task: render a list of scenes."""
    scenes, image_size = args
    return [render_scene(s, image_size) for s in scenes]
