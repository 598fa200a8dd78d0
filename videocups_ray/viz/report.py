"""A self-contained HTML report: sections of text, tables, image rows and plots.

Images are written as PNG files next to ``index.html`` (relative links), so the folder can be
copied or served as it is.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from videocups_ray.data.encodings import write_png


@dataclass
class _Block:
    kind: str
    payload: object


@dataclass
class HtmlReport:
    out_dir: Path
    title: str
    blocks: list[_Block] = field(default_factory=list)
    _n_images: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        (self.out_dir / "img").mkdir(parents=True, exist_ok=True)

    def heading(self, text: str) -> None:
        self.blocks.append(_Block("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(_Block("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]], caption: str = "") -> None:
        self.blocks.append(_Block("table", (list(headers), [list(r) for r in rows], caption)))

    def image_row(self, items: Sequence[tuple[str, np.ndarray]], *, width: int = 320) -> None:
        """One row of captioned images (RGB uint8 arrays), saved as PNG files."""
        saved = []
        for caption, img in items:
            name = f"img/{self._n_images:04d}.png"
            self._n_images += 1
            write_png(self.out_dir / name, np.ascontiguousarray(img))
            saved.append((caption, name))
        self.blocks.append(_Block("images", (saved, width)))

    def animation(self, rel_path: str, caption: str) -> None:
        """An animated image already written under the report folder (e.g. ``clips/x.webp``)."""
        if not (self.out_dir / rel_path).is_file():
            raise FileNotFoundError(f"report animation {self.out_dir / rel_path}: not written")
        self.blocks.append(_Block("images", ([(caption, rel_path)], None)))

    def figure(self, fig, caption: str = "") -> None:
        """A matplotlib figure, saved as PNG (the caller closes nothing; we close it)."""
        import matplotlib.pyplot as plt

        name = f"img/{self._n_images:04d}.png"
        self._n_images += 1
        fig.savefig(self.out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        self.blocks.append(_Block("images", ([(caption, name)], 640)))

    def write(self) -> Path:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;margin:20px;max-width:1800px}"
            "figure{display:inline-block;margin:4px}figcaption{font-size:12px;color:#444}"
            "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;"
            "text-align:right}th{background:#eee}</style>",
            f"</head><body><h1>{html.escape(self.title)}</h1>",
        ]
        for b in self.blocks:
            if b.kind in ("h2", "p"):
                parts.append(f"<{b.kind}>{html.escape(str(b.payload))}</{b.kind}>")
            elif b.kind == "table":
                headers, rows, caption = b.payload
                parts.append("<table>")
                if caption:
                    parts.append(f"<caption>{html.escape(caption)}</caption>")
                parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>")
                for r in rows:
                    cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r)
                    parts.append(f"<tr>{cells}</tr>")
                parts.append("</table>")
            elif b.kind == "images":
                saved, width = b.payload
                parts.append("<div>")
                for caption, name in saved:
                    size = f" width='{width}'" if width else " style='max-width:100%'"
                    parts.append(
                        f"<figure><img src='{name}'{size} alt='{html.escape(caption)}'>"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                    )
                parts.append("</div>")
        parts.append("</body></html>")
        path = self.out_dir / "index.html"
        tmp = path.with_name(f".index.html.tmp{os.getpid()}")
        tmp.write_text("\n".join(parts))
        os.replace(tmp, path)
        return path


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
