"""Renders a report's HTML in a real headless Chromium and measures what a reader would see.

Used by the report tests and ``benchmarks/report_screenshots.py``. Playwright drives the
browser; the browser binary is Debian's ``chromium-headless-shell`` (``make browser``), since
Playwright's own ``install`` downloads a build from a CDN that this project's machines cannot
reach. Elements are found by the SVG ids the report plots set (``gid``): ``pareto-label-*``,
``heat-cell-*``, ``heat-infeasible-*``, ``heat-colorbar``, ``heat-legend``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.errors import TerrazzoError

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


@dataclass(frozen=True, slots=True)
class Box:
    """An element's box on the page in CSS pixels, with the ink (dark pixel) fraction inside it."""

    id: str
    text: str
    x: float
    y: float
    width: float
    height: float
    ink: float = 0.0
    contrast: float = 0.0

    def overlaps(self, other: Box, tol_px: float = 0.5) -> bool:
        return (
            self.x + tol_px < other.x + other.width
            and other.x + tol_px < self.x + self.width
            and self.y + tol_px < other.y + other.height
            and other.y + tol_px < self.y + self.height
        )

    def inside(self, other: Box, tol_px: float = 1.0) -> bool:
        return (
            self.x >= other.x - tol_px
            and self.y >= other.y - tol_px
            and self.x + self.width <= other.x + other.width + tol_px
            and self.y + self.height <= other.y + other.height + tol_px
        )


@dataclass(frozen=True, slots=True)
class PageCheck:
    """What the browser saw: errors, element boxes by id prefix, screenshots written."""

    console_errors: tuple[str, ...]
    page_errors: tuple[str, ...]
    boxes: dict[str, tuple[Box, ...]] = field(default_factory=dict)
    screenshots: tuple[Path, ...] = ()

    def overlapping(self, prefix: str) -> list[tuple[str, str]]:
        """Pairs of elements under ``prefix`` whose boxes intersect."""
        bs = self.boxes.get(prefix, ())
        return [(a.id, b.id) for i, a in enumerate(bs) for b in bs[i + 1 :] if a.overlaps(b)]


def find_browser() -> str | None:
    """Path of a Chromium binary on PATH, or None."""
    for name in BROWSERS:
        p = shutil.which(name)
        if p:
            return p
    return None


_BOXES_JS = """(prefix) => Array.from(document.querySelectorAll(`[id^="${prefix}"]`)).map(e => {
  const r = e.getBoundingClientRect();
  return {id: e.id, text: (e.textContent || "").trim(), x: r.x + window.scrollX,
          y: r.y + window.scrollY, width: r.width, height: r.height};
})"""


@dataclass(frozen=True, slots=True)
class PageSpec:
    """One page to open and what to measure on it (see ``check_page`` for the fields)."""

    html_path: Path
    prefixes: tuple[str, ...] = ()
    ink_prefixes: tuple[str, ...] = ()
    shots: tuple[tuple[str, Path], ...] = ()


def check_page(
    html_path: str | Path,
    prefixes: Sequence[str] = (),
    *,
    ink_prefixes: Sequence[str] = (),
    shots: Sequence[tuple[str, Path]] = (),
    width_px: int = 1200,
) -> PageCheck:
    """Open ``html_path`` in headless Chromium and measure it.

    Args:
        html_path: the report.
        prefixes: SVG/HTML id prefixes whose elements' boxes to return.
        ink_prefixes: of those, the ones whose boxes are also cut out of a screenshot to
            measure ink (fraction of pixels darker/lighter than the box's background) and
            contrast (max − min luminance, 0..1): a value printed in a cell has both.
        shots: (CSS selector, PNG path): screenshots of the first element matching each
            selector (``"page"`` for the whole page).
        width_px: viewport width.

    Raises:
        TerrazzoError: no browser or Playwright is installed (``make browser``; dev extra).
    """
    spec = PageSpec(Path(html_path), tuple(prefixes), tuple(ink_prefixes), tuple(shots))
    return check_pages([spec], width_px=width_px)[0]


def check_pages(specs: Sequence[PageSpec], *, width_px: int = 1200) -> list[PageCheck]:
    """``check_page`` for several pages in one browser launch (a launch costs seconds)."""
    exe = find_browser()
    if exe is None:
        raise TerrazzoError(
            f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}); run `make browser`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise TerrazzoError("playwright is not installed: pip install -e '.[dev]'") from None

    out: list[PageCheck] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            for spec in specs:
                page = browser.new_page(viewport={"width": width_px, "height": 900})
                out.append(_measure(page, spec))
                page.close()
        finally:
            browser.close()
    return out


def _measure(page: Any, spec: PageSpec) -> PageCheck:
    import io

    import numpy as np
    from PIL import Image

    console: list[str] = []
    errors: list[str] = []
    boxes: dict[str, tuple[Box, ...]] = {}
    written: list[Path] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(spec.html_path.resolve().as_uri(), wait_until="load")
    for prefix in spec.prefixes:
        raw: list[dict[str, Any]] = page.evaluate(_BOXES_JS, prefix)
        boxes[prefix] = tuple(Box(**r) for r in raw)
    inked = [b for p in spec.ink_prefixes for b in boxes.get(p, ()) if b.width > 0]
    if inked:
        # one screenshot of the region holding every measured box, not the whole page
        x0, y0 = min(b.x for b in inked), min(b.y for b in inked)
        x1 = max(b.x + b.width for b in inked)
        y1 = max(b.y + b.height for b in inked)
        png = page.screenshot(
            full_page=True, clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
        )
        img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64) / 255
        for p in spec.ink_prefixes:
            boxes[p] = tuple(_with_ink(b, img, x0, y0) for b in boxes.get(p, ()))
    for selector, path in spec.shots:
        path.parent.mkdir(parents=True, exist_ok=True)
        if selector == "page":
            page.screenshot(path=str(path), full_page=True)
        else:
            page.locator(selector).first.screenshot(path=str(path))
        written.append(path)
    return PageCheck(tuple(console), tuple(errors), boxes, tuple(written))


def _with_ink(b: Box, img: Any, ox: float, oy: float) -> Box:
    """``img`` is the screenshot of the page region whose top-left corner is (ox, oy)."""
    import numpy as np

    y0, x0 = max(0, int(b.y - oy)), max(0, int(b.x - ox))
    y1, x1 = int(np.ceil(b.y - oy + b.height)), int(np.ceil(b.x - ox + b.width))
    cut = img[y0:y1, x0:x1]
    if cut.size == 0:
        return b
    bg = float(np.median(cut))
    ink = float((np.abs(cut - bg) > 0.25).mean())
    return Box(b.id, b.text, b.x, b.y, b.width, b.height, ink, float(cut.max() - cut.min()))
