"""A Hugging Face checkpoint directory → placed prefill/decode builds → an LLM ``.tzb`` bundle.

The route (``terrazzo compile MODEL_DIR``): ``terrazzo.frontend.hf.read_hf_dir`` checks the
directory; the model is placed like an agent with a single ``llm`` node (``place_agent`` on a
spec of ``input → llm → output`` whose config is the checkpoint's own ``config.json``, so it is
costed at its real size, with the P::D split); the prefill and decode phases are exported with
the checkpoint's weights streamed in (``terrazzo.codegen.llm_phases``, ``checkpoint`` set) and
built by ``build_stage`` for their planned devices (plus the host build).

The bundle is a plain ``.tzb`` with two stages, 0 = prefill and 1 = decode, and
``plan.json["llm"]``: the build config, the stage indices, the tokenizer (``tokenizer.json``
text and ``tokenizer_config.json``, whose ``chat_template`` is used for ``--chat``), the
generation config and the EOS ids. ``terrazzo.runtime.llm_text`` generates text from it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.pipeline.load import FleetLike, SLALike, as_fleet, as_sla
from terrazzo.placement import SLA, Plan

if TYPE_CHECKING:
    from terrazzo.pipeline.model import ProgressFn


def llm_sla(sla: SLALike, new_tokens: int) -> SLA:
    """An SLA from ``"ttft=500ms,tbt=50ms[,latency=2s]"`` (end-to-end defaults to
    ttft + new_tokens·tbt) or anything ``as_sla`` takes."""
    from terrazzo.errors import TerrazzoError
    from terrazzo.placement import parse_duration_s

    if not (isinstance(sla, str) and "=" in sla):
        return as_sla(sla)
    parts: dict[str, float] = {}
    for item in sla.split(","):
        k, _, v = item.strip().partition("=")
        if k not in ("ttft", "tbt", "latency"):
            raise TerrazzoError(f"--sla {sla!r}: unknown bound {k!r} (ttft, tbt, latency)")
        parts[k] = parse_duration_s(v)
    lat = parts.get("latency")
    if lat is None:
        if "ttft" not in parts or "tbt" not in parts:
            raise TerrazzoError(f"--sla {sla!r}: give latency=, or both ttft= and tbt=")
        lat = parts["ttft"] + new_tokens * parts["tbt"]
    return SLA(latency_s=lat, ttft_s=parts.get("ttft"), tbt_s=parts.get("tbt"))


@dataclass(frozen=True, slots=True)
class LLMCompileResult:
    path: Path
    plan: Plan
    devices: dict[str, str]
    notes: tuple[str, ...]
    build_s: float
    model_type: str


def compile_hf(
    model_dir: str | Path,
    fleet: FleetLike,
    sla: SLALike,
    out_path: str | Path,
    *,
    rps: float = 1.0,
    solver: str = "milp",
    max_len: int = 128,
    prompt_len: int = 32,
    device_builds: bool = True,
    profile: str | None = None,
    sign_key: str | Path | bool | None = True,
    progress: ProgressFn | None = None,
) -> LLMCompileResult:
    """Compile a Hugging Face checkpoint directory into an LLM bundle (see the module doc).

    Args:
        max_len: the context (prompt + generated tokens) the KV cache holds.
        prompt_len: the static prefill chunk; longer prompts run their remaining tokens
            through decode steps (one token each) before generating.

    Raises:
        FrontendError: the directory is unusable (one line naming the file and field).
        PlacementError / CodegenError: as for any compile.
    """
    from terrazzo.bundle import TensorSpec, write_bundle
    from terrazzo.codegen import host_target
    from terrazzo.codegen.llm_phases import (
        PHASE_OUTPUTS,
        TinyLlamaConfig,
        example_inputs,
        export_relax,
    )
    from terrazzo.costmodel import load_catalog
    from terrazzo.errors import FrontendError
    from terrazzo.frontend.agent import lower_spec
    from terrazzo.frontend.agent_spec import parse_spec
    from terrazzo.frontend.hf import read_hf_dir
    from terrazzo.pipeline.agent import build_task_stage, place_agent

    t0 = time.perf_counter()
    say = progress or (lambda *_: None)
    if not 0 < prompt_len <= max_len:
        raise FrontendError(f"--prompt-len {prompt_len} must be in 1..--max-len ({max_len})")
    ck = read_hf_dir(model_dir, max_len=max_len)
    cfg = TinyLlamaConfig(
        **ck.build_settings, max_len=max_len, prompt_len=prompt_len, checkpoint=str(ck.path)
    )
    name = ck.path.name or "llm"
    fleet, sla = as_fleet(fleet), llm_sla(sla, max(1, max_len - prompt_len))
    catalog = load_catalog(profile or fleet.profile or "datasheet")
    spec = parse_spec(
        {
            "name": name,
            "nodes": [
                {"name": "prompt", "type": "input", "shape": [1, prompt_len], "dtype": "int64"},
                {
                    "name": "llm",
                    "type": "llm",
                    "config": ck.config,
                    "dtype": "fp32",
                    "max_new_tokens": max_len - prompt_len if max_len > prompt_len else 1,
                    "input_tokens": prompt_len,
                },
                {"name": "text", "type": "output"},
            ],
            "edges": ["prompt -> llm", "llm -> text"],
        },  # fmt: skip
        where=f"{ck.path}/config.json",
    )
    graph = lower_spec(spec, base_dir=ck.path)
    plan, notes = place_agent(
        graph, fleet, sla, rps, solver, cost_preset=None, pd_split=True, catalog=catalog
    )
    say("placed", {"assignment": dict(plan.assignment), "latency_s": plan.latency_s})
    ex = example_inputs(cfg)
    shapes = {"logits": (1, cfg.vocab_size), "k_cache": cfg.cache_shape, "v_cache": cfg.cache_shape}
    stages: list[Any] = []
    host = dict(host_target())
    with tempfile.TemporaryDirectory(prefix="tz-llm-") as tmp:
        mods = export_relax(cfg)  # the weights stream in here, once for both phases
        for index, phase in enumerate(("prefill", "decode")):
            task = f"llm.{phase}"
            ins = [TensorSpec(n, str(a.dtype), tuple(a.shape)) for n, a in ex[phase].items()]
            outs = [TensorSpec(n, "float32", tuple(shapes[n])) for n in PHASE_OUTPUTS[phase]]
            exported = (mods[phase], ins, outs)
            stages.append(
                build_task_stage(
                    index, task, exported, plan, catalog, device_builds, Path(tmp), say
                )
            )
        llm = {
            "model_type": ck.model_type,
            "config": {k: getattr(cfg, k) for k in cfg.__slots__},
            "stages": {"prefill": 0, "decode": 1},
            "tokenizer_json": ck.tokenizer_json,
            "tokenizer_config": ck.tokenizer_config,
            "generation_config": ck.generation_config,
            "eos_token_ids": ck.eos_token_ids(),
            "max_position_embeddings": ck.max_position_embeddings,
        }
        sha = hashlib.sha256(json.dumps(ck.config, sort_keys=True).encode())
        for f in sorted(set(ck.weight_files.values())):  # headers only: names, dtypes, offsets
            sha.update(f.encode())
            sha.update(str((ck.path / f).stat().st_size).encode())
        path = write_bundle(
            out_path,
            name=name,
            inputs=list(stages[0].inputs),
            outputs=[TensorSpec("tokens", "int64", (max_len - 1,))],
            stages=stages,
            plan_mlir=f'// LLM bundle of {ck.model_type} checkpoint {name}: see plan.json["llm"]\n',
            plan_json={"llm": llm, "plan": plan.to_json()},
            model_sha256=sha.hexdigest(),
            fleet=fleet.model_dump() if hasattr(fleet, "model_dump") else {},
            sla={"latency_s": sla.latency_s, "ttft_s": sla.ttft_s, "tbt_s": sla.tbt_s},
            plan_summary={
                "kind": "llm",
                "solver": plan.solver,
                "latency_s": plan.latency_s,
                "usd_per_hour": plan.usd_per_hour,
                "rps": plan.rps,
                "stages": len(stages),
                "assignment": dict(plan.assignment),
                "notes": notes,
            },
            host_target=host,
            sign_key=sign_key,
        )
    devices = {t: plan.assignment[t] for t in ("llm.prefill", "llm.decode")}
    return LLMCompileResult(
        Path(path), plan, devices, tuple(notes), time.perf_counter() - t0, ck.model_type
    )
