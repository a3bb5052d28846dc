"""Request traces for the fleet simulator: synthetic production-like workloads and replay of trace files.

A trace is a sorted tuple of :class:`TraceRequest` (arrival time, prompt tokens, output tokens).
``costmodel.llm_sim`` serves it on a P::D fleet. Length distributions come from published
production traces (sources below); arrival processes are Poisson, Gamma (bursty) or uniform.

Sources of the length distributions (nothing here is invented):

* ``azure-code-2023`` / ``azure-conv-2023``: quantiles computed from the released Azure LLM
  inference trace 2023 (``data/AzureLLMInferenceTrace_code.csv``, 8,819 requests, and
  ``..._conv.csv``, 19,366 requests; github.com/Azure/AzurePublicDataset commit 7909210,
  CC-BY 4.0), the trace analysed in Patel et al., "Splitwise: Efficient generative LLM
  inference using phase splitting", ISCA 2024. Medians: coding 1,469 prompt / 13 output
  tokens, conversation 1,020 / 129 (the paper's Fig. 3 reports ~1,500 / 13 and ~1,020 / 129).
  Means: coding 2,048 / 27.9, conversation 1,155 / 211. Over the one-hour sample the mean
  rate is 2.57 req/s (coding) and 5.53 req/s (conversation); the coefficient of variation of
  inter-arrival times is 13.2 (coding, very bursty) and 1.09 (conversation, near Poisson).
  Prompt and output lengths are nearly uncorrelated in both (Pearson on log lengths −0.004
  and 0.088), so they are sampled independently.
* Gamma inter-arrivals (``--arrival gamma:CV``): the burstiness model of Wang et al.,
  "BurstGPT: A Real-World Workload Dataset to Optimize LLM Serving Systems" (arXiv 2401.17644),
  which fits Gamma-distributed inter-arrival times to Azure OpenAI GPT traffic; CV = 1 is
  Poisson, CV > 1 bursty. The shape is the caller's choice (the conversation trace above has
  CV 1.09, the coding trace 13.2).

The Azure LLM inference trace 2024 (DynamoLLM, HPCA 2025) is published only as a download
outside this repository; its statistics are not reproduced here. Replay it as a file.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from terrazzo.errors import CostModelError


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: when it arrives (s from the trace start), its prompt and output lengths."""

    arrival_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """An empirical length distribution as an inverse CDF: tokens at the given percentiles."""

    name: str
    percentiles: tuple[float, ...]
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    source: str

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (input, output) lengths drawn independently by inverse-CDF interpolation."""
        p = np.asarray(self.percentiles) / 100.0
        u_in, u_out = rng.random(n), rng.random(n)
        ins = np.maximum(1, np.rint(np.interp(u_in, p, self.input_tokens))).astype(np.int64)
        outs = np.maximum(1, np.rint(np.interp(u_out, p, self.output_tokens))).astype(np.int64)
        return ins, outs


_PCT = (0, 1, 2.5, 5, 7.5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90,
        92.5, 95, 97.5, 99, 99.5, 99.9, 100)  # fmt: skip
_AZURE_2023 = (
    "Azure LLM inference trace 2023 (github.com/Azure/AzurePublicDataset, commit 7909210, "
    "CC-BY 4.0; Patel et al., Splitwise, ISCA 2024): percentiles computed from the released CSV"
)

DISTRIBUTIONS: Mapping[str, LengthDistribution] = MappingProxyType(
    {
        "azure-code-2023": LengthDistribution(
            "azure-code-2023",
            _PCT,
            (
                3,
                17,
                44,
                75,
                102,
                147,
                232,
                386,
                578,
                770,
                939,
                1075,
                1261,
                1469,
                1690,
                1909,
                2164,
                2433,
                2744,
                3192,
                3920,
                5188,
                6097,
                7303,
                7435,
                7436,
                7436,
                7437,
                7437,
            ),
            (
                6,
                6,
                6,
                6,
                6,
                7,
                7,
                8,
                9,
                9,
                10,
                11,
                12,
                13,
                14,
                16,
                18,
                20,
                24,
                29,
                39,
                55,
                69,
                90,
                145,
                251,
                359,
                825,
                1899,
            ),
            _AZURE_2023 + ", AzureLLMInferenceTrace_code.csv (8,819 requests)",
        ),  # fmt: skip
        "azure-conv-2023": LengthDistribution(
            "azure-conv-2023",
            _PCT,
            (
                2,
                29,
                120,
                181,
                200,
                207,
                372,
                387,
                396,
                403,
                414,
                703,
                984,
                1020,
                1045,
                1071,
                1097,
                1130,
                1189,
                1315,
                1876,
                2734,
                4075,
                4083,
                4092,
                4142,
                4831,
                6179,
                14050,
            ),
            (
                7,
                16,
                28,
                41,
                48,
                54,
                67,
                77,
                85,
                91,
                96,
                103,
                113,
                129,
                151,
                177,
                217,
                384,
                395,
                400,
                411,
                424,
                430,
                451,
                522,
                601,
                643,
                954,
                1000,
            ),
            _AZURE_2023 + ", AzureLLMInferenceTrace_conv.csv (19,366 requests)",
        ),  # fmt: skip
    }
)


def arrival_times(n: int, rate_per_s: float, process: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` arrival times (s) at mean ``rate_per_s``.

    ``process``: ``poisson`` (exponential gaps), ``uniform`` (equal gaps), or ``gamma:CV``
    (Gamma gaps with coefficient of variation CV, BurstGPT's model; CV = 1 is Poisson).
    """
    if n < 0:
        raise CostModelError(f"request count must be ≥ 0, found {n}")
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise CostModelError(
            f"arrival rate must be a positive number of requests/s, found {rate_per_s!r}"
        )
    mean = 1.0 / rate_per_s
    if process == "poisson":
        gaps = rng.exponential(mean, n)
    elif process == "uniform":
        gaps = np.full(n, mean)
    elif process.startswith("gamma:"):
        try:
            cv = float(process.split(":", 1)[1])
        except ValueError:
            cv = float("nan")
        if not (cv > 0 and math.isfinite(cv)):
            raise CostModelError(f"arrival process {process!r}: CV must be a positive number")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, mean / shape, n)
    else:
        raise CostModelError(
            f"unknown arrival process {process!r}; expected poisson, uniform or gamma:CV"
        )
    return np.cumsum(gaps) - gaps[0] if n else gaps


def synthetic_trace(
    lengths: str,
    n: int,
    rate_per_s: float,
    arrival: str = "poisson",
    seed: int = 0,
) -> tuple[TraceRequest, ...]:
    """``n`` requests with lengths from ``lengths`` and arrivals from ``arrival``.

    ``lengths``: a name in :data:`DISTRIBUTIONS`, or ``fixed:ISL/OSL`` (every request alike,
    the fleet study's cells).

    Raises:
        CostModelError: unknown distribution or arrival process, bad lengths or rate.
    """
    rng = np.random.default_rng(seed)
    t = arrival_times(n, rate_per_s, arrival, rng)
    if lengths.startswith("fixed:"):
        isl, osl = _parse_fixed(lengths)
        ins = np.full(n, isl, dtype=np.int64)
        outs = np.full(n, osl, dtype=np.int64)
    elif lengths in DISTRIBUTIONS:
        ins, outs = DISTRIBUTIONS[lengths].sample(n, rng)
    else:
        raise CostModelError(
            f"unknown length distribution {lengths!r}; expected fixed:ISL/OSL or one of "
            f"{', '.join(DISTRIBUTIONS)}"
        )
    return tuple(
        TraceRequest(float(a), int(i), int(o)) for a, i, o in zip(t, ins, outs, strict=True)
    )


def _parse_fixed(spec: str) -> tuple[int, int]:
    body = spec.split(":", 1)[1]
    try:
        isl_s, osl_s = body.split("/")
        isl, osl = int(isl_s), int(osl_s)
    except ValueError:
        raise CostModelError(
            f"bad fixed lengths {spec!r}; expected fixed:ISL/OSL, e.g. fixed:512/4096"
        ) from None
    if isl < 1 or osl < 1:
        raise CostModelError(f"bad fixed lengths {spec!r}: ISL and OSL must be ≥ 1")
    return isl, osl


# Column names accepted in trace files (first match wins), lower-cased.
_ARRIVAL_COLS = ("arrival_s", "arrival_time", "timestamp", "time")
_INPUT_COLS = ("input_tokens", "contexttokens", "request tokens", "prompt_tokens", "input_len")
_OUTPUT_COLS = ("output_tokens", "generatedtokens", "response tokens", "completion_tokens",
                "output_len")  # fmt: skip
MAX_TRACE_TOKENS = 10_000_000  # a sanity bound: larger lengths mean a corrupt column


def load_trace(path: str | Path) -> tuple[TraceRequest, ...]:
    """Read a trace file: CSV with a header row, or JSONL (one object per line).

    Columns (case-insensitive): arrival time (``arrival_s``, ``timestamp`` — seconds, or an
    ISO date-time as in the Azure traces), input tokens (``input_tokens``, ``ContextTokens``,
    ``Request tokens``) and output tokens (``output_tokens``, ``GeneratedTokens``,
    ``Response tokens``). Times are shifted so the first request arrives at 0; rows are sorted
    by arrival. Rows with 0 output tokens (failed requests in BurstGPT) are rejected, not skipped.

    Raises:
        CostModelError: the file is missing, empty, not CSV/JSONL, lacks a column, or has a
            bad value (the message names the file, line and column).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CostModelError(f"trace file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CostModelError(f"trace file {p} cannot be read as text: {e}") from None
    if not text.strip():
        raise CostModelError(f"trace file {p} is empty")
    if p.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        rows = list(_jsonl_rows(p, text))
    else:
        rows = list(_csv_rows(p, text))
    if not rows:
        raise CostModelError(f"trace file {p} has a header but no requests")
    t0 = min(r[1] for r in rows)
    out = sorted((TraceRequest(t - t0, i, o) for _, t, i, o in rows), key=lambda r: r.arrival_s)
    return tuple(out)


def _pick(keys: Iterable[str], names: Sequence[str]) -> str | None:
    lower = {k.strip().lower(): k for k in keys}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _columns(p: Path, keys: Iterable[str], where: str) -> tuple[str, str, str]:
    keys = list(keys)
    cols = (_pick(keys, _ARRIVAL_COLS), _pick(keys, _INPUT_COLS), _pick(keys, _OUTPUT_COLS))
    missing = [
        what
        for what, c in zip(("arrival time", "input tokens", "output tokens"), cols, strict=True)
        if c is None
    ]
    if missing:
        raise CostModelError(
            f"trace file {p} {where}: no {' / '.join(missing)} column (found {', '.join(keys) or 'none'}; "
            f"expected e.g. arrival_s,input_tokens,output_tokens)"
        )
    return cols  # type: ignore[return-value]


def _row(p: Path, line: int, rec: Mapping[str, Any], cols: tuple[str, str, str]) -> tuple[int, float, int, int]:  # fmt: skip
    a, i, o = cols
    t = _time(p, line, a, rec.get(a))
    return (line, t, _tokens(p, line, i, rec.get(i), 0), _tokens(p, line, o, rec.get(o), 1))


def _time(p: Path, line: int, col: str, v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        t = float(v)
    elif isinstance(v, str) and v.strip():
        s = v.strip()
        try:
            t = float(s)
        except ValueError:
            try:  # Azure traces: "2023-11-16 18:15:46.6805900" (7 fractional digits)
                head, _, frac = s.partition(".")
                digits = "".join(ch for ch in frac if ch.isdigit())
                tail = frac[len(digits) :]
                t = datetime.fromisoformat(f"{head}.{digits[:6] or '0'}{tail}").timestamp()
            except ValueError:
                raise CostModelError(
                    f"trace file {p} line {line}: {col} {v!r} is neither seconds nor a date-time"
                ) from None
    else:
        raise CostModelError(f"trace file {p} line {line}: {col} is missing")
    if not math.isfinite(t):
        raise CostModelError(f"trace file {p} line {line}: {col} {v!r} is not finite")
    return t


def _tokens(p: Path, line: int, col: str, v: Any, low: int) -> int:
    try:
        f = float(v) if not isinstance(v, bool) else float("nan")
    except (TypeError, ValueError):
        f = float("nan")
    if not (math.isfinite(f) and f == int(f) and low <= f <= MAX_TRACE_TOKENS):
        raise CostModelError(
            f"trace file {p} line {line}: {col} {v!r} is not an integer in [{low}, {MAX_TRACE_TOKENS}]"
        )
    return int(f)


def _csv_rows(p: Path, text: str) -> Iterable[tuple[int, float, int, int]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise CostModelError(f"trace file {p} has no CSV header")
    cols = _columns(p, reader.fieldnames, "header")
    try:
        for n, rec in enumerate(reader, start=2):
            yield _row(p, n, rec, cols)
    except csv.Error as e:
        raise CostModelError(f"trace file {p} is not valid CSV: {e}") from None


def _jsonl_rows(p: Path, text: str) -> Iterable[tuple[int, float, int, int]]:
    cols: tuple[str, str, str] | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CostModelError(f"trace file {p} line {n} is not JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise CostModelError(
                f"trace file {p} line {n}: expected a JSON object, found {type(rec).__name__}"
            )
        if cols is None:
            cols = _columns(p, rec.keys(), f"line {n}")
        yield _row(p, n, rec, cols)


def trace_from_spec(
    spec: str, n: int = 1000, rate_per_s: float = 1.0, arrival: str = "poisson", seed: int = 0
) -> tuple[TraceRequest, ...]:
    """A trace from a CLI spec: ``synthetic:NAME`` / ``fixed:ISL/OSL`` / ``file:PATH`` / a path."""
    if spec.startswith("synthetic:"):
        return synthetic_trace(spec.split(":", 1)[1], n, rate_per_s, arrival, seed)
    if spec.startswith("fixed:"):
        return synthetic_trace(spec, n, rate_per_s, arrival, seed)
    return load_trace(spec.split(":", 1)[1] if spec.startswith("file:") else spec)
