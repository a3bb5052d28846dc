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


def parse_batches(spec: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"1,8,16,32"`` → ``(1, 8, 16, 32)`` (sorted, unique; ``""`` → none)."""
    from terrazzo.errors import FrontendError

    if isinstance(spec, str):
        try:
            vals = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise FrontendError(f"--decode-batches {spec!r}: comma-separated integers") from None
    else:
        vals = [int(x) for x in spec]
    if any(v < 1 or v > 256 for v in vals):
        raise FrontendError(f"--decode-batches {spec!r}: each batch size must be in 1..256")
    return tuple(sorted(set(vals)))


def compute_reason(flags: set[str] | None = None) -> str:
    """Why the phases compute in fp32: what this CPU's flags (``/proc/cpuinfo``, or ``flags``)
    say about fp16 and bf16 arithmetic. Stated in the bundle and printed by ``inspect``."""
    if flags is None:
        flags = set()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
    fp16 = [f for f in ("avx512_fp16", "amx_fp16") if f in flags]
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    out = (
        f"this CPU has fp16 arithmetic ({'/'.join(fp16)}), but fp16 compute is not built yet"
        if fp16
        else "this CPU lacks fp16 arithmetic (no avx512_fp16/amx_fp16)"
    )
    if bf16:  # avx512_bf16 is dot products into fp32 accumulators, not a bf16 datapath
        out += f"; it has bf16 dot products ({'/'.join(bf16)}), bf16 compute is not built yet"
    else:
        out += "; no bf16 (avx512_bf16/amx_bf16) either"
    return out


KV_MEM_FRACTION = 0.5  # of the decode device's memory, after the weights
KV_BLOCK = 16


def kv_layout(cfg: Any, plan: Any, catalog: Any, batches: tuple[int, ...], kv_dtype: str) -> Any:
    """The paged KV pool for the batched decode: as many blocks as half the decode device's
    memory left after the weights holds, capped at a full context for each sequence of
    the largest batch (more cannot be used at once), plus the scratch block."""
    from terrazzo.codegen.llm_phases import KVLayout

    dtype = "float16" if kv_dtype == "fp16" else "float32"
    block = min(KV_BLOCK, cfg.max_len)
    per_seq = -(-cfg.max_len // block)
    elt = 2 if dtype == "float16" else 4
    block_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * block * cfg.head_dim * elt
    try:
        mem = int(catalog[plan.assignment["llm.decode"]].mem_bytes)
    except (KeyError, AttributeError, TypeError):
        mem = 8 << 30
    weights = 4 * (cfg.vocab_size * cfg.d_model * 2 + cfg.n_layers * (
        4 * cfg.d_model * cfg.d_model + 3 * cfg.d_model * cfg.d_ff))  # fmt: skip
    by_mem = max(per_seq, int(KV_MEM_FRACTION * max(0, mem - weights)) // block_bytes)
    want = per_seq * max(batches or (1,))
    return KVLayout(block=block, n_blocks=1 + min(by_mem, want), dtype=dtype)


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
    decode_batches: str | tuple[int, ...] = (1, 8, 16, 32),
    kv_dtype: str = "fp32",
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
        DECODE_BATCH_OUTPUTS,
        PHASE_OUTPUTS,
        TinyLlamaConfig,
        decode_batch_inputs,
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
    batches = parse_batches(decode_batches)
    if kv_dtype not in ("fp32", "fp16"):
        raise FrontendError(f"--kv-dtype {kv_dtype!r}: fp32 or fp16")
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
    kv = kv_layout(cfg, plan, catalog, batches, kv_dtype)
    shapes: dict[str, Any] = {
        "logits": (1, cfg.vocab_size), "k_cache": cfg.cache_shape, "v_cache": cfg.cache_shape}  # fmt: skip
    phases = ["prefill", "decode"]
    row = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
    for b in batches:
        phases.append(f"decode_b{b}")
        ex[f"decode_b{b}"] = decode_batch_inputs(cfg, kv, b)
    stages: list[Any] = []
    host = dict(host_target())
    with tempfile.TemporaryDirectory(prefix="tz-llm-") as tmp:
        mods = export_relax(cfg, batches, kv)  # the weights stream in here, once for all phases
        for index, phase in enumerate(phases):
            task = "llm.prefill" if phase == "prefill" else "llm.decode"
            ins = [TensorSpec(n, str(a.dtype), tuple(a.shape)) for n, a in ex[phase].items()]
            if phase.startswith("decode_b"):
                b = int(phase[len("decode_b") :])
                bs = {"logits": (b, cfg.vocab_size), "k_new": (b, *row), "v_new": (b, *row)}
                outs = [TensorSpec(n, "float32", bs[n]) for n in DECODE_BATCH_OUTPUTS]
            else:
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
            "stages": {
                "prefill": 0,
                "decode": 1,
                "decode_batch": {str(b): 2 + i for i, b in enumerate(batches)},
            },
            "kv": {"block": kv.block, "n_blocks": kv.n_blocks, "dtype": kv.dtype},
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
                "llm": {
                    "compute_dtype": "fp32",
                    "compute_reason": compute_reason(),
                    "kv_dtype": kv.dtype,
                    "kv_blocks": kv.n_blocks - 1,
                    "kv_block_tokens": kv.block,
                    "decode_batches": list(batches),
                    "max_len": max_len,
                    "prompt_chunk": prompt_len,
                },
            },
            host_target=host,
            sign_key=sign_key,
        )
    devices = {t: plan.assignment[t] for t in ("llm.prefill", "llm.decode")}
    return LLMCompileResult(
        Path(path), plan, devices, tuple(notes), time.perf_counter() - t0, ck.model_type
    )
