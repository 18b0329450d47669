"""The demo's figures: the comparison grid (no imaging library needed) and the error-vs-NFE plot.

The grid is drawn into a numpy RGB canvas with the bitmap font of :mod:`.font` and written as a PNG with
``zlib``, so it is produced on any machine. The plot needs matplotlib (the pack's optional ``plots``
extra); without it the plot is skipped with a printed hint.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..atomic import atomic_path
from .font import HEIGHT as FONT_HEIGHT, text_mask, text_width

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
ACCENT = (20, 90, 200)  # DyWeight's column
FRAME = (200, 200, 200)


# --- PNG -----------------------------------------------------------------------------------------
def write_png(path, image: np.ndarray) -> None:
    """Write an RGB uint8 array [H, W, 3] as an 8-bit PNG (atomically); with ≤ 256 distinct colours, as a
    palette image (a third of the size for the grid)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width, channels = image.shape
    if channels != 3:
        raise ValueError(f"write_png expects an RGB image [H, W, 3], got {image.shape}")
    colours, index = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) <= 256:
        rows, colour_type = index.astype(np.uint8).reshape(height, width), 3
    else:
        rows, colour_type = image.reshape(height, width * 3), 2
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    palette = chunk(b"PLTE", colours.astype(np.uint8).tobytes()) if colour_type == 3 else b""
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette \
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b"")
    with atomic_path(Path(path)) as temporary:
        Path(temporary).write_bytes(png)


# --- drawing -------------------------------------------------------------------------------------
class Canvas:
    """A white RGB canvas with text and image blitting."""

    def __init__(self, height: int, width: int):
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = BACKGROUND

    def text(self, x: int, y: int, text: str, color=INK, scale: int = 2, anchor: str = "left") -> None:
        """Draw ``text`` with its top at ``y``; ``anchor`` left/centre/right refers to ``x``."""
        mask = text_mask(text, scale)
        if anchor == "centre":
            x -= mask.shape[1] // 2
        elif anchor == "right":
            x -= mask.shape[1]
        region = self.pixels[y:y + mask.shape[0], x:x + mask.shape[1]]
        region[mask[:region.shape[0], :region.shape[1]]] = color

    def image(self, x: int, y: int, gray: np.ndarray) -> None:
        """Blit a uint8 greyscale image."""
        self.pixels[y:y + gray.shape[0], x:x + gray.shape[1]] = gray[..., None]

    def rectangle(self, x: int, y: int, width: int, height: int, color=FRAME) -> None:
        self.pixels[y, x:x + width] = color
        self.pixels[y + height - 1, x:x + width] = color
        self.pixels[y:y + height, x] = color
        self.pixels[y:y + height, x + width - 1] = color


def to_gray(image, low: float = -1.0, high: float = 1.0, levels: int = 128) -> np.ndarray:
    """A [H, W] (or [1, H, W]) image with values in [low, high] → uint8 with ``levels`` grey levels, clipped
    (128 look the same as 256 and leave room for the labels' colours in a 256-colour palette PNG)."""
    array = np.asarray(image, dtype=np.float64).reshape(image.shape[-2], image.shape[-1])
    steps = np.clip(np.round((array - low) / (high - low) * (levels - 1)), 0, levels - 1)
    return np.round(steps * 255 / (levels - 1)).astype(np.uint8)


def tile(images: Sequence, columns: int, zoom: int, gap: int = 2) -> np.ndarray:
    """Images [H, W] in [-1, 1], upscaled ×``zoom`` with nearest-neighbour, in rows of ``columns``."""
    grays = [to_gray(image).repeat(zoom, axis=0).repeat(zoom, axis=1) for image in images]
    height, width = grays[0].shape
    rows = math.ceil(len(grays) / columns)
    sheet = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap), 255, dtype=np.uint8)
    for index, gray in enumerate(grays):
        row, column = divmod(index, columns)
        sheet[row * (height + gap):row * (height + gap) + height,
              column * (width + gap):column * (width + gap) + width] = gray
    return sheet


# --- the comparison grid -------------------------------------------------------------------------
def comparison_grid(path, title: Sequence[str], columns: Sequence[str], rows: Sequence[str], cells: Sequence,
                    captions: Sequence, accent_column: Optional[int] = None, per_row: int = 3,
                    zoom: int = 4) -> Path:
    """Write the solver × NFE grid.

    Args:
        title: lines above the grid.
        columns: column headers (solvers); rows: row labels (``NFE n``).
        cells: ``cells[r][c]`` a sequence of images [H, W] (or [1, H, W]) in [-1, 1], the same seeds
            in the same order in every cell.
        captions: ``captions[r][c]`` one line under each cell (e.g. its RMSE), or ``""``.
        accent_column: the column drawn in the accent colour (DyWeight).
    """
    scale, pad = 2, 14
    line = FONT_HEIGHT * scale + 6
    sheets = [[tile(cell, per_row, zoom) for cell in row] for row in cells]
    cell_h, cell_w = sheets[0][0].shape
    column_w = max([cell_w] + [text_width(text, scale) for text in columns]
                   + [text_width(text, scale) for row in captions for text in row]) + 2 * pad
    label_w = max(text_width(text, scale) for text in rows) + 2 * pad
    title_h = len(title) * line + pad
    header_h = line + 4
    row_h = cell_h + line + 2 * pad
    width = label_w + len(columns) * column_w + pad
    height = title_h + header_h + len(rows) * row_h + pad
    canvas = Canvas(height, max(width, max(text_width(text, scale) for text in title) + 2 * pad))
    for index, text in enumerate(title):
        canvas.text(pad, pad // 2 + index * line, text, INK if index == 0 else MUTED)
    top = title_h
    for c, header in enumerate(columns):
        color = ACCENT if c == accent_column else INK
        canvas.text(label_w + c * column_w + column_w // 2, top, header, color, anchor="centre")
    for r, label in enumerate(rows):
        y = top + header_h + r * row_h
        canvas.text(pad, y + pad + cell_h // 2 - FONT_HEIGHT * scale // 2, label)
        for c, sheet in enumerate(sheets[r]):
            x = label_w + c * column_w + (column_w - cell_w) // 2
            canvas.image(x, y + pad, sheet)
            color = ACCENT if c == accent_column else (FRAME if c else MUTED)
            canvas.rectangle(x - 3, y + pad - 3, cell_w + 6, cell_h + 6, color)
            caption = captions[r][c]
            if caption:
                canvas.text(label_w + c * column_w + column_w // 2, y + pad + cell_h + 6, caption,
                            ACCENT if c == accent_column else MUTED, anchor="centre")
    write_png(path, canvas.pixels)
    return Path(path)


# --- the error-vs-NFE plot -----------------------------------------------------------------------
def error_plot(path, nfes: Sequence[int], rmse: dict, psnr: dict, labels: dict, title: str,
               highlight: str = "dyweight", dashed: Sequence[str] = ("init",), dpi: int = 100,
               fd: Optional[dict] = None, fd_teacher: Optional[float] = None) -> bool:
    """RMSE (log scale) and PSNR to the teacher against NFE, one line per solver, and with ``fd`` a third
    panel: the Fréchet distance to real digits (log scale), ``fd_teacher`` (the teacher's) as a dotted line.

    ``rmse``/``psnr``/``fd``: solver → one figure per NFE (None where missing). Returns False, after
    printing a hint, when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"(matplotlib is not installed: skipped the plot {path}; "
              "`pip install -e '.[plots]'` or `bash scripts/bootstrap.sh demo` to get it)")
        return False
    panels = [rmse, psnr] + ([fd] if fd is not None else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.1 + 0.25 * (len(rmse) > 5)))
    markers = "osD^v<>ph*"
    for index, name in enumerate(rmse):
        strong = name == highlight
        style = dict(marker=markers[index % len(markers)], ms=6 if strong else 4, lw=2.6 if strong else 1.2,
                     label=labels.get(name, name), zorder=3 if strong else 2)
        if strong:
            style["color"] = "#145ac8"
        if name in dashed:
            style.update(ls="--", color="0.45")
        for axis, panel in zip(axes, panels):
            points = [(n, v) for n, v in zip(nfes, panel[name]) if v is not None and math.isfinite(v)]
            if points:
                axis.plot(*zip(*points), **style)
    axes[0].set(xlabel="NFE (model calls per image)", ylabel="RMSE to teacher (lower is better)", yscale="log")
    axes[1].set(xlabel="NFE (model calls per image)", ylabel="PSNR to teacher, dB (higher is better)")
    logarithmic = [axes[0]]
    if fd is not None:
        axes[2].set(xlabel="NFE (model calls per image)", ylabel="FD to held-out real digits (lower is better)",
                    yscale="log")
        if fd_teacher is not None:
            axes[2].axhline(fd_teacher, color="0.2", ls=":", lw=1.2)
            axes[2].annotate("teacher", (nfes[-1], fd_teacher), textcoords="offset points", xytext=(0, 4),
                             ha="right", fontsize=8, color="0.2")
        logarithmic.append(axes[2])

    def label(value, _position):
        leading = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
        return f"{value:g}" if round(leading) in (1, 2, 3, 5) else ""

    for axis in logarithmic:
        axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(label))
        axis.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(label))
        axis.tick_params(axis="y", which="minor", labelsize=7)
    for axis in axes:
        axis.set_xticks(list(nfes))
        axis.grid(alpha=0.3, which="both")
    handles, names = axes[0].get_legend_handles_labels()
    columns = min(len(names), 5 if len(panels) == 2 else 7)
    figure.legend(handles, names, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.055 * math.ceil(len(names) / columns), 1, 1))
    save_figure(figure, path, dpi)
    plt.close(figure)
    return True


def save_figure(figure, path, dpi: int) -> None:
    """Save a matplotlib figure as a small PNG: 256-colour palette (Pillow comes with matplotlib)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            palette = image.convert("RGB").quantize(colors=256)
            small = io.BytesIO()
            palette.save(small, format="PNG", optimize=True)
        data = min(data, small.getvalue(), key=len)
    except ImportError:
        pass
    with atomic_path(Path(path)) as temporary:
        Path(temporary).write_bytes(data)
