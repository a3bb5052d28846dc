"""Question: how long does `terrazzo compile` take per zoo model, and how big is the bundle?

For each zoo model: export ONNX once (cached, timed apart), then time the pipeline
import → plan → split → build (every stage for its device target + a host-CPU build + the
whole-model reference) → bundle, with no tuning. Target: a BERT-base-size graph in ≤ 60 s on
this machine. Also reports bundle size against weight size.

    .venv/bin/python benchmarks/compile_time.py [--models mlp,bert,bert-base] [--fleet cpu,t4,h100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_result  # noqa: E402

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="mlp,cnn,bert,gpt2,llama,bert-base", help="zoo models, comma-separated"
    )
    ap.add_argument("--fleet", default="cpu,t4,h100", help="device classes (count 4 each)")
    ap.add_argument("--sla", default="1s", help="latency SLA (default 1s)")
    ap.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "terrazzo-zoo"), help="ONNX cache"
    )
    args = ap.parse_args()

    from terrazzo import zoo
    from terrazzo.codegen import describe_target
    from terrazzo.pipeline import compile_model

    fleet = {"devices": {d: {"count": 4} for d in args.fleet.split(",")}}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tz-bench-") as out:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            path = zoo.export_onnx(name, args.cache)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = compile_model(path, fleet, args.sla, out_path=Path(out) / f"{name}.tzb")
            total_s = time.perf_counter() - t0
            targets = sorted({describe_target(b.choice.target) for b in res.builds})
            row = {
                "model": name,
                "ops": len(res.graph.ops),
                "stages": len(res.builds),
                "devices": ",".join(b.choice.device for b in res.builds),
                "targets": ";".join(targets),
                "export_s": round(export_s, 2),
                **{f"{k}_s": round(v, 2) for k, v in res.phase_s.items()},
                "total_s": round(total_s, 2),
                "weight_mb": round(res.weight_bytes / 1e6, 3),
                "bundle_mb": round(res.bundle_bytes / 1e6, 3),
                "bundle_over_weights": round(res.bundle_bytes / max(1, res.weight_bytes), 3),
            }
            if name == "bert-base":
                row["meets_60s_target"] = total_s <= TARGET_S
            rows.append(row)
            print(f"{name}: {total_s:.1f} s, bundle {row['bundle_mb']} MB, weights {row['weight_mb']} MB",
                  flush=True)  # fmt: skip
    cols = ["model", "ops", "stages", "devices", "import_s", "plan_s", "build_s", "bundle_s", "total_s",
            "weight_mb", "bundle_mb", "bundle_over_weights"]  # fmt: skip
    print_table(
        rows, cols, title=f"terrazzo compile time (fleet {args.fleet}, SLA {args.sla}, no tuning)"
    )
    path = write_result(
        "compile_time", rows, {"fleet": fleet, "sla": args.sla, "target_s": TARGET_S}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
