"""Bundle step 4: re-check a bundle — hashes, signature, and its numerics against references.

Two references, checked separately so that a failure says where it is:

- the outputs an independent implementation (onnxruntime for ONNX, torch for an ``nn.Module``)
  computed at compile time from stored inputs (``reference/io.safetensors``): the staged
  bundle, end to end, must reproduce them;
- the whole model built as one function (``reference/host.so``), which also returns every
  value the stages pass between them: on random inputs each stage, fed the reference's values
  for its inputs, must reproduce the reference's values for its outputs, and the stages run
  one after another must reproduce the reference's outputs.

Values compare as IEEE values: NaN where the reference has NaN (and nowhere else), infinities
of the same sign, then the largest absolute difference over the finite rest against the
tolerance; integers and booleans must be equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from terrazzo.bundle._read import BundleLimits, open_bundle
from terrazzo.bundle._runner import random_inputs
from terrazzo.bundle._trust import TrustSpec


@dataclass(frozen=True, slots=True)
class NumericsCheck:
    """One comparison made by ``verify_bundle``.

    Attributes:
        what: what was compared with what (``end to end vs onnxruntime 1.31.1 (stored)``,
            ``stage 3 (l4) vs whole-model reference``).
        max_abs_diff: largest |got - reference| (inf for a NaN/Inf/shape/dtype mismatch).
        ok: ``max_abs_diff <= tolerance``.
        detail: the first mismatch in words (None when ok).
    """

    what: str
    max_abs_diff: float
    ok: bool
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of ``verify_bundle``.

    Attributes:
        name: model name.
        members: number of members whose sha256 matched.
        signed / signature_verified: whether a signature is present / verified with a trusted
            key (an unverified bundle is only checked with ``allow_unsigned``).
        signature: ``verified (<fingerprint>, <key file>)``, ``none (unsigned)`` or ``does not
            verify with any trusted key (...)``.
        numerics: ``"ok"``, ``"mismatch"`` or ``"skipped"`` (no reference in the bundle).
        max_abs_diff: largest difference over every check (None when skipped).
        tolerance: the bound used.
        trials: random input sets tried against the whole-model reference.
        notes: sentences (fallback builds used, why a check was skipped, ...).
        reference: the independent implementation whose stored outputs were checked (None
            when the bundle stores none).
        checks: every comparison made, in order.
    """

    name: str
    members: int
    signed: bool
    signature_verified: bool
    numerics: str
    max_abs_diff: float | None
    tolerance: float
    trials: int
    notes: tuple[str, ...]
    reference: str | None = None
    checks: tuple[NumericsCheck, ...] = ()
    signature: str = ""

    @property
    def ok(self) -> bool:
        return self.numerics != "mismatch"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "ok": self.ok, "members": self.members, "signed": self.signed,
            "signature_verified": self.signature_verified, "signature": self.signature,
            "numerics": self.numerics,
            "max_abs_diff": _finite(self.max_abs_diff), "tolerance": self.tolerance, "trials": self.trials,
            "reference": self.reference, "notes": list(self.notes),
            "checks": [
                {"what": c.what, "max_abs_diff": _finite(c.max_abs_diff), "ok": c.ok, "detail": c.detail}
                for c in self.checks
            ],
        }  # fmt: skip


def _finite(x: float | None) -> float | str | None:
    """JSON has no inf or NaN: those are written as text."""
    return x if x is None or np.isfinite(x) else str(x)


def compare_arrays(got: Any, want: Any) -> tuple[float, str | None]:
    """``(max abs diff, first mismatch in words or None)`` of two arrays, IEEE-aware.

    NaN must sit exactly where the reference has NaN, infinities must match in sign; either
    failing, a shape or a dtype difference gives ``inf``. Integers and booleans compare
    exactly (the diff is the largest absolute integer difference, 1 for booleans).
    """
    g, w = np.asarray(got), np.asarray(want)
    if g.shape != w.shape:
        return float("inf"), f"shape {list(g.shape)} vs reference {list(w.shape)}"
    if g.dtype != w.dtype:
        return float("inf"), f"dtype {g.dtype} vs reference {w.dtype}"
    if g.size == 0:
        return 0.0, None
    if g.dtype.kind in "fc":
        gn, wn = np.isnan(g), np.isnan(w)
        if (gn != wn).any():
            i = np.unravel_index(int(np.argmax(gn != wn)), g.shape)
            return float("inf"), f"NaN mismatch at {list(i)}: {g[i]} vs reference {w[i]}"
        gi, wi = np.isinf(g), np.isinf(w)
        bad = (gi | wi) & ~gn & (g != w)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), g.shape)
            return float("inf"), f"infinity mismatch at {list(i)}: {g[i]} vs reference {w[i]}"
        fin = ~(gn | gi | wi)
        d = np.abs(g[fin].astype(np.float64) - w[fin].astype(np.float64))
        return (float(d.max()) if d.size else 0.0), None
    if g.dtype.kind == "b":
        n = int((g != w).sum())
        return float(n > 0), (f"{n} booleans differ" if n else None)
    d = np.abs(g.astype(np.int64) - w.astype(np.int64)) if g.dtype.kind in "iu" else None
    if d is None:
        n = int((g != w).sum())
        return float(n > 0), (f"{n} elements differ" if n else None)
    return float(d.max()), None


def _check(
    what: str, got: dict[str, Any], want: dict[str, Any], names: Any, tol: float
) -> NumericsCheck:
    worst, detail = 0.0, None
    for n in names:
        if n not in got:
            return NumericsCheck(what, float("inf"), False, f"output {n!r} missing")
        d, why = compare_arrays(got[n], want[n])
        worst = max(worst, d)
        if (why or d > tol) and detail is None:
            detail = f"output {n!r}: " + (why or f"max abs diff {d:.3g}")
    ok = worst <= tol
    return NumericsCheck(what, worst, ok, None if ok else detail)


def verify_bundle(
    path: str | os.PathLike[str],
    trust: TrustSpec = None,
    tolerance: float = 1e-5,
    trials: int = 2,
    limits: BundleLimits | None = None,
    *,
    allow_unsigned: bool = False,
    trust_key: TrustSpec = None,
) -> VerifyReport:
    """Validate a bundle (signature first, then every hash) and re-check its numerics (see
    the module docstring).

    No stage library is loaded before the signature and every hash have been checked; an
    unsigned bundle, or one no trusted key verifies, is refused unless ``allow_unsigned``.

    Args:
        path: the ``.tzb`` file.
        trust: trusted Ed25519 public keys (see ``bundle.resolve_trust``; default: the local
            trust store).
        tolerance: largest absolute difference allowed on finite values.
        trials: random input sets for the whole-model reference checks.
        limits: size and count caps for reading the bundle.
        allow_unsigned: check an unsigned or unverifiable bundle anyway.
        trust_key: old name of ``trust``.

    Raises:
        BundleError: any structural, hash or signature failure (naming the member).
    """
    with open_bundle(path, trust, limits, allow_unsigned=allow_unsigned, trust_key=trust_key) as b:
        notes: list[str] = []
        sig = b.checked.describe_signature()
        checks: list[NumericsCheck] = []
        out_names = [o.name for o in b.outputs]
        stored = b.reference_io()
        ref = b.load_reference()
        if stored is None and ref is None:
            return VerifyReport(b.name, len(b.manifest["members"]), b.signed, b.signature_verified,
                                "skipped", None, tolerance, 0,
                                ("the bundle has no reference; numerics not re-checked",), None, (),
                                sig)  # fmt: skip
        runners = b.load_stages(device="cpu")
        notes.extend(
            f"stage {r.index} ({r.device}) checked with its host-CPU build" for r in runners
            if str(b.stages[r.index].target.get("kind")) != "llvm"
        )  # fmt: skip
        source = None
        if stored is not None:
            source, ins, outs = stored
            got = b.run(ins, runners)
            checks.append(_check(f"end to end vs {source} (stored)", got, outs, out_names,
                                 tolerance))  # fmt: skip
        else:
            notes.append("the bundle stores no outputs of an independent implementation "
                         "(compiled from an ir.Graph, or by an older terrazzo)")  # fmt: skip
        same = (b.manifest.get("reference") or {}).get("same_as_stage") is not None
        if ref is not None and not same:
            # Bundles since the reference returned the cut values record what it returns.
            per_stage = bool((b.manifest.get("reference") or {}).get("outputs"))
            if not per_stage and len(runners) > 1:
                notes.append("the whole-model reference returns only the graph outputs (an "
                             "older bundle): stages are checked end to end only")  # fmt: skip
            stage_worst = {r.index: NumericsCheck("", 0.0, True) for r in runners}
            e2e = NumericsCheck("", 0.0, True)
            for seed in range(trials):
                x = random_inputs(b.inputs, seed)
                want = ref(x)
                c = _check("", b.run(x, runners), want, out_names, tolerance)
                e2e = c if c.max_abs_diff > e2e.max_abs_diff or not c.ok else e2e
                if not per_stage:
                    continue
                env = {**x, **want}
                for r in runners:
                    got = r({s.name: env[s.name] for s in r.inputs})
                    names = [s.name for s in r.outputs]
                    c = _check("", got, env, names, tolerance)
                    if c.max_abs_diff > stage_worst[r.index].max_abs_diff or not c.ok:
                        stage_worst[r.index] = c
            if per_stage:
                for r in runners:
                    c = stage_worst[r.index]
                    checks.append(NumericsCheck(f"stage {r.index} ({r.device}) vs whole-model "
                                                "reference", c.max_abs_diff, c.ok, c.detail))  # fmt: skip
            checks.append(NumericsCheck("end to end vs whole-model reference (TVM, one function)",
                                        e2e.max_abs_diff, e2e.ok, e2e.detail))  # fmt: skip
        elif same:
            notes.append("single-stage bundle: the stage is the whole model, so it is checked "
                         "against the stored independent outputs only")  # fmt: skip
        worst = max((c.max_abs_diff for c in checks), default=0.0)
        numerics = "skipped" if not checks else "ok" if all(c.ok for c in checks) else "mismatch"
        return VerifyReport(b.name, len(b.manifest["members"]), b.signed, b.signature_verified,
                            numerics, worst, tolerance, trials if ref is not None and not same else 0,
                            tuple(notes), source, tuple(checks), sig)  # fmt: skip
