"""Bundle step 4: re-check a bundle — hashes, signature, and staged-vs-whole-model numerics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from terrazzo.bundle._read import BundleLimits, open_bundle
from terrazzo.bundle._runner import random_inputs
from terrazzo.bundle._trust import TrustSpec


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
        max_abs_diff: largest |staged - reference| over all outputs and trials.
        tolerance: the bound used.
        trials: random input sets tried.
        notes: sentences (fallback builds used, why numerics were skipped, ...).
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
    signature: str = ""

    @property
    def ok(self) -> bool:
        return self.numerics != "mismatch"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "ok": self.ok, "members": self.members, "signed": self.signed,
            "signature_verified": self.signature_verified, "signature": self.signature,
            "numerics": self.numerics,
            "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "trials": self.trials,
            "notes": list(self.notes),
        }  # fmt: skip


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
    """Validate a bundle (signature first, then every hash) and re-check its numerics.

    No stage library is loaded before the signature and every hash have been checked; an
    unsigned bundle, or one no trusted key verifies, is refused unless ``allow_unsigned``.

    Raises:
        BundleError: any structural, hash or signature failure (naming the member).
    """
    with open_bundle(path, trust, limits, allow_unsigned=allow_unsigned, trust_key=trust_key) as b:
        notes: list[str] = []
        sig = b.checked.describe_signature()
        ref = b.load_reference()
        if ref is None:
            return VerifyReport(b.name, len(b.manifest["members"]), b.signed, b.signature_verified,
                                "skipped", None, tolerance, 0,
                                ("the bundle has no whole-model reference; numerics not re-checked",),
                                sig)  # fmt: skip
        runners = b.load_stages(device="cpu")
        if (b.manifest.get("reference") or {}).get("same_as_stage") is not None:
            notes.append("single-stage bundle: the stage is the whole model, so the staged run is "
                         "checked for finite, repeatable outputs against itself")  # fmt: skip
        notes.extend(
            f"stage {r.index} ({r.device}) checked with its host-CPU build" for r in runners
            if str(b.stages[r.index].target.get("kind")) != "llvm"
        )  # fmt: skip
        worst = 0.0
        for seed in range(trials):
            x = random_inputs(b.inputs, seed)
            got = b.run(x, runners)
            want = ref(x)
            for name in want:
                g, w = np.asarray(got[name]), np.asarray(want[name])
                if g.shape != w.shape:
                    notes.append(f"output {name!r}: shape {g.shape} vs reference {w.shape}")
                    worst = float("inf")
                    continue
                if g.dtype.kind in "fc":
                    d = float(
                        np.nanmax(np.abs(g.astype(np.float64) - w.astype(np.float64)), initial=0.0)
                    )
                    if np.isnan(g).sum() != np.isnan(w).sum():
                        d = float("inf")
                else:
                    d = float((g != w).sum())
                worst = max(worst, d)
        numerics = "ok" if worst <= tolerance else "mismatch"
        return VerifyReport(b.name, len(b.manifest["members"]), b.signed, b.signature_verified,
                            numerics, worst, tolerance, trials, tuple(notes), sig)  # fmt: skip
