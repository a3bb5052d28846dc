"""Question: does the P::D fleet study reproduce arXiv 2507.19635's headline (mixed pairs beat H100::H100;
B200::Gaudi3 / H100::Gaudi3 come out ahead)? Prints the best pair per cell and writes JSON."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from terrazzo.costmodel.catalog import load_catalog
from terrazzo.report.study import StudyOptions, headline, run_study

NAMED = ("b200::gaudi3", "h100::gaudi3", "b200::b200")
PAPER_DEVICES = ("a40", "a100-80g", "gaudi3", "mi300x", "h100", "b200")


def _run(profile: str, devices: tuple[str, ...]) -> tuple[list[dict[str, object]], float]:
    t = time.perf_counter()
    res = run_study(load_catalog(profile), StudyOptions(devices=devices), datasheet=load_catalog("datasheet"),
                    profile=profile)  # fmt: skip
    return headline(res, NAMED), time.perf_counter() - t


def _print(title: str, head: list[dict[str, object]]) -> None:
    print(f"\n{title}")
    cols = ["model", "prec", "isl/osl", "sla", "best pair", "best", *NAMED]
    print(" | ".join(f"{c:>14}" for c in cols))
    for h in head:
        vals = [h["model"], h["precision"], f"{h['isl']}/{h['osl']}", h["sla"], h["best_pair"], h["best_tco_benefit"],
                *(h[p] for p in NAMED)]  # fmt: skip
        print(" | ".join(f"{v:>14.2f}" if isinstance(v, float) else f"{v!s:>14}" for v in vals))


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    runs = {
        "paper-2025 (Table 5 devices)": ("paper-2025", PAPER_DEVICES),
        "paper-2025 without MI300x": (
            "paper-2025",
            tuple(d for d in PAPER_DEVICES if d != "mi300x"),
        ),
        "datasheet (same devices, corrected peaks, TDP power)": ("datasheet", PAPER_DEVICES),
    }
    rows: list[dict[str, object]] = []
    runs_meta: dict[str, object] = {}
    for title, (profile, devs) in runs.items():
        head, secs = _run(profile, devs)
        _print(f"{title}: TCO benefit vs h100::h100 ({secs:.2f} s)", head)
        wins = sum(1 for h in head if (h["b200::gaudi3"] or 0) > 1 and (h["h100::gaudi3"] or 0) > 1)
        print(f"cells where both b200::gaudi3 and h100::gaudi3 beat h100::h100: {wins}/{len(head)}")
        runs_meta[title] = {"profile": profile, "devices": devs, "seconds": secs}
        rows.extend({"run": title, **h} for h in head)
    p = write_result("tco_study", rows, {"runs": runs_meta})
    print(f"\nwrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
