"""A grouped bar chart with error bars, written as a PNG with numpy and zlib only.

matplotlib is not part of the stack, and the experiment report needs one small figure, so this
draws it directly: bars (from zero) per group and series, +-1 std whiskers, a 3x5 pixel font.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# 3x5 glyphs, one 3-bit row per digit (top to bottom), MSB = left pixel.
_FONT = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71717", "4": "55711", "5": "74717", "6": "74757",
    "7": "71111", "8": "75757", "9": "75717", "A": "25755", "B": "65656", "C": "34443", "D": "65556",
    "E": "74647", "F": "74644", "G": "34553", "H": "55755", "I": "72227", "J": "11152", "K": "55655",
    "L": "44447", "M": "57755", "N": "65555", "O": "25552", "P": "65644", "Q": "25563", "R": "65655",
    "S": "34216", "T": "72222", "U": "55557", "V": "55552", "W": "55775", "X": "55255", "Y": "55222",
    "Z": "71247", ".": "00002", "-": "00700", "+": "02720", "%": "51245", "_": "00007", "@": "25743",
    "(": "12221", ")": "42224", "/": "11244", ":": "02020", "=": "07070", " ": "00000",
}  # fmt: skip
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (120, 120, 120)]
_SCALE = 2  # pixels per font pixel


def _text(img: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0)) -> None:
    for ch in text.upper():
        rows = _FONT.get(ch, _FONT[" "])
        for r, digit in enumerate(rows):
            bits = int(digit)
            for c in range(3):
                if bits & (4 >> c):
                    y0, x0 = y + r * _SCALE, x + c * _SCALE
                    img[y0 : y0 + _SCALE, x0 : x0 + _SCALE] = color
        x += 4 * _SCALE


def _text_width(text: str) -> int:
    return 4 * _SCALE * len(text)


def write_png(img: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 -> PNG file (8-bit RGB, no interlace)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def bar_chart(
    path: Path,
    title: str,
    groups: list[str],
    series: list[str],
    means: np.ndarray,  # (len(groups), len(series)); NaN = no bar
    stds: np.ndarray,
) -> None:
    bar, gap, left, top, bottom, plot_h = 18, 28, 70, 60, 40, 220
    width = max(left + len(groups) * (len(series) * bar + gap) + 20, left + _text_width(title) + 20)
    height = top + plot_h + bottom
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    finite = np.isfinite(means)
    lo = float(np.nanmin(np.where(finite, means - np.nan_to_num(stds), np.nan))) if finite.any() else 0.0
    hi = float(np.nanmax(np.where(finite, means + np.nan_to_num(stds), np.nan))) if finite.any() else 1.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # bars grow from zero
    span = max(hi - lo, 1e-6)
    lo, hi = lo - 0.05 * span, hi + 0.1 * span

    def y_of(v: float) -> int:
        return int(round(top + plot_h - (v - lo) / (hi - lo) * plot_h))

    _text(img, left, 8, title)
    for i, name in enumerate(series):  # legend
        x = left + i * (_text_width(name) + 30)
        img[28:38, x : x + 10] = _PALETTE[i % len(_PALETTE)]
        _text(img, x + 14, 28, name)
    img[top : top + plot_h + 1, left - 1] = 0  # y axis
    img[y_of(0.0), left - 1 : width - 10] = 0  # zero line
    for v in np.linspace(lo, hi, 5):  # ticks
        y = y_of(v)
        img[y, left - 5 : left - 1] = 0
        _text(img, 4, y - 5, f"{v:.3f}")
    for g, group in enumerate(groups):
        x0 = left + 10 + g * (len(series) * bar + gap)
        for s in range(len(series)):
            m = means[g, s]
            if not np.isfinite(m):
                continue
            x = x0 + s * bar
            y_a, y_b = sorted((y_of(m), y_of(0.0)))
            img[y_a : y_b + 1, x : x + bar - 4] = _PALETTE[s % len(_PALETTE)]
            sd = float(np.nan_to_num(stds[g, s]))
            if sd > 0:  # whisker: +-1 std
                mid = x + (bar - 4) // 2
                y_hi, y_lo = max(y_of(m + sd), top), min(y_of(m - sd), top + plot_h)
                img[y_hi : y_lo + 1, mid] = 0
                img[y_hi, mid - 3 : mid + 4] = 0
                img[y_lo, mid - 3 : mid + 4] = 0
        _text(img, x0, top + plot_h + 8, group)
    write_png(img, path)
