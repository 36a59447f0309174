"""Tiny PNG charts for the quality benchmark, drawn with OpenCV (matplotlib is not a dependency).

``line_chart`` (curves over frames, optional vertical markers) and ``bar_chart`` (grouped bars with an optional
chance tick per group). Output is deterministic: same data, same PNG bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

__all__ = ["line_chart", "bar_chart"]

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 44, 52  # margins; the legend lives in the right one
# BGR colours that stay apart in print and for most colour-blind readers
PALETTE = [(178, 114, 0), (0, 94, 213), (115, 158, 0), (167, 121, 204), (66, 228, 240), (233, 180, 86),
           (0, 0, 0), (120, 120, 120)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _canvas(title: str) -> np.ndarray:
    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    cv2.putText(img, title[:80], (LEFT, 26), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def _axes(img, x_range, y_range, xlabel, ylabel, x_ticks=None, y_ticks=None):
    x0, x1 = x_range
    y0, y1 = y_range
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def to_px(x, y):
        fx = (x - x0) / (x1 - x0) if x1 != x0 else 0.5
        fy = (y - y0) / (y1 - y0) if y1 != y0 else 0.5
        return int(round(LEFT + fx * pw)), int(round(TOP + (1 - fy) * ph))

    cv2.rectangle(img, (LEFT, TOP), (LEFT + pw, TOP + ph), (0, 0, 0), 1)
    for y in (y_ticks if y_ticks is not None else np.linspace(y0, y1, 5)):
        px = to_px(x0, y)
        cv2.line(img, (LEFT, px[1]), (LEFT + pw, px[1]), (225, 225, 225), 1)
        cv2.putText(img, _fmt(y), (6, px[1] + 4), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for x in (x_ticks if x_ticks is not None else _nice_ticks(x0, x1)):
        px = to_px(x, y0)
        cv2.line(img, (px[0], TOP + ph), (px[0], TOP + ph + 4), (0, 0, 0), 1)
        label = _fmt(x)
        cv2.putText(img, label, (px[0] - 4 * len(label), TOP + ph + 18), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (LEFT + pw // 2 - 4 * len(xlabel), HEIGHT - 12), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (6, TOP - 8), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return to_px


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` ticks at multiples of 1, 2 or 5 times a power of ten within [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step * 1e-9, step)]


def _fmt(v: float) -> str:
    v = float(v)
    if v == int(v):
        return str(int(v))
    return f"{v:.2f}".rstrip("0")


def _legend(img, names: Sequence[str]):
    for i, name in enumerate(names):
        y = TOP + 14 + 20 * i
        color = PALETTE[i % len(PALETTE)]
        cv2.line(img, (WIDTH - RIGHT + 10, y - 4), (WIDTH - RIGHT + 34, y - 4), color, 2)
        cv2.putText(img, name[:20], (WIDTH - RIGHT + 40, y), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)


def line_chart(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
               xlabel: str, ylabel: str, y_range: tuple[float, float] | None = (0.0, 1.0),
               markers: Sequence[float] = ()) -> Path:
    """Curves (name -> (xs, ys)); NaN points are skipped. ``markers``: dashed vertical lines (e.g. switches)."""
    img = _canvas(title)
    xs_all = np.concatenate([np.asarray(x, float) for x, _ in series.values()] or [np.zeros(1)])
    ys_all = np.concatenate([np.asarray(y, float) for _, y in series.values()] or [np.zeros(1)])
    finite = ys_all[np.isfinite(ys_all)]
    if y_range is None:
        hi = float(finite.max()) if len(finite) else 1.0
        y_range = (0.0, hi * 1.1 if hi > 0 else 1.0)
    x_range = (float(xs_all.min()), float(xs_all.max())) if len(xs_all) else (0.0, 1.0)
    to_px = _axes(img, x_range, y_range, xlabel, ylabel)
    for m in markers:
        top, bottom = to_px(m, y_range[1]), to_px(m, y_range[0])
        for y in range(top[1], bottom[1], 8):
            cv2.line(img, (top[0], y), (top[0], min(y + 4, bottom[1])), (80, 80, 80), 1)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        pts = [to_px(x, min(max(y, y_range[0]), y_range[1])) for x, y in zip(xs, ys) if np.isfinite(y)]
        color = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, color, 2, cv2.LINE_AA)
        for p in pts if len(pts) <= 60 else ():
            cv2.circle(img, p, 2, color, -1, cv2.LINE_AA)
    _legend(img, list(series))
    return _write(path, img)


def bar_chart(path: str | Path, groups: Mapping[str, Mapping[str, float]], *, title: str, ylabel: str,
              chance: Mapping[str, float] | None = None, y_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    """Grouped bars: groups = {group label: {series name: value}}; ``chance`` draws a black tick per group."""
    img = _canvas(title)
    names = list(dict.fromkeys(name for values in groups.values() for name in values))
    labels = list(groups)
    n = max(len(labels), 1)
    to_px = _axes(img, (0.0, float(n)), y_range, "", ylabel, x_ticks=[])
    slot = (to_px(1.0, 0)[0] - to_px(0.0, 0)[0])
    bar = max(2, int(slot * 0.8 / max(len(names), 1)))
    for g, label in enumerate(labels):
        left = to_px(float(g), 0)[0] + int(slot * 0.1)
        for k, name in enumerate(names):
            value = groups[label].get(name)
            if value is None or not np.isfinite(value):
                continue
            x = left + k * bar
            top = to_px(0, min(max(value, y_range[0]), y_range[1]))[1]
            cv2.rectangle(img, (x, top), (x + bar - 2, to_px(0, y_range[0])[1]), PALETTE[k % len(PALETTE)], -1)
        if chance and label in chance:
            y = to_px(0, chance[label])[1]
            cv2.line(img, (left - 2, y), (left + len(names) * bar, y), (0, 0, 0), 2)
        text = label[:14]
        cv2.putText(img, text, (left, HEIGHT - BOTTOM + 18), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    _legend(img, names + (["chance"] if chance else []))
    if chance:  # the legend's last line is the chance tick, drawn black
        y = TOP + 14 + 20 * len(names)
        cv2.line(img, (WIDTH - RIGHT + 10, y - 4), (WIDTH - RIGHT + 34, y - 4), (0, 0, 0), 2)
    return _write(path, img)


def _write(path, img) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path
