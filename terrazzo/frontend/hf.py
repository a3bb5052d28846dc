"""Hugging Face checkpoint directories: ``config.json``, safetensors weights, tokenizer files.

``read_hf_dir`` checks a directory the way ``terrazzo compile MODEL_DIR`` needs it and returns
an :class:`HFCheckpoint`: the architecture as plain build settings (``build_settings``, the
fields of ``terrazzo.codegen.llm_phases.TinyLlamaConfig``), where each weight tensor lives
(``weight_files``: tensor name → safetensors file, from ``model.safetensors.index.json`` for
sharded checkpoints) and the tokenizer files. Nothing is loaded here but JSON and safetensors
headers; the weights are streamed tensor by tensor by the builder
(``terrazzo.codegen.llm_phases``) with :func:`iter_tensors`.

Supported families: Llama, Qwen2 (q/k/v biases), Mistral (a sliding window is accepted only
when the compiled context fits inside it, where it changes nothing) and Phi-3 (fused
``qkv_proj``/``gate_up_proj``, split on load; full rotary only). GPT-2 and Phi-1/2 (LayerNorm,
GELU, learned or partial positions) map onto the same module: LayerNorm with biases, a
GELU (tanh) MLP, GPT-2's learned positions and Conv1D (transposed) weights, Phi's partial
rotary embedding and parallel attention/MLP residual. Every problem is one
:class:`~terrazzo.errors.FrontendError` line naming the file and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.errors import FrontendError

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "phi", "phi3", "qwen2")
_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True, slots=True)
class HFCheckpoint:
    """A checked Hugging Face model directory."""

    path: Path
    model_type: str
    config: dict[str, Any]
    build_settings: dict[str, Any]
    weight_files: dict[str, str]  # tensor name → file name inside ``path``
    tokenizer_json: str  # the tokenizer.json text
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    generation_config: dict[str, Any] = field(default_factory=dict)
    max_position_embeddings: int = 2048

    def eos_token_ids(self) -> list[int]:
        """EOS ids from generation_config.json, else config.json."""
        for src in (self.generation_config, self.config):
            e = src.get("eos_token_id")
            if e is not None:
                return [int(x) for x in (e if isinstance(e, list) else [e])]
        return []


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FrontendError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise FrontendError(f"{path}: {what} must be a JSON object")
    return data


def is_hf_dir(path: str | Path) -> bool:
    """A directory (the compile CLI's MODEL) is taken as a Hugging Face checkpoint."""
    return Path(path).is_dir()


def _rope_settings(
    cfg: Mapping[str, Any], cfg_path: Path, partial_ok: bool = False
) -> dict[str, Any]:
    """rope theta and scaling from ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling``."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    src = params if params else scaling
    where = "rope_parameters" if params else "rope_scaling"
    rtype = str(src.get("rope_type", src.get("type", "default")) or "default")
    if rtype not in _ROPE_TYPES:
        raise FrontendError(
            f"{cfg_path} field '{where}.rope_type': {rtype!r} is not supported "
            f"(supported: {', '.join(_ROPE_TYPES)})"
        )
    partial = float(src.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    if partial != 1.0 and not partial_ok:
        raise FrontendError(
            f"{cfg_path} field 'partial_rotary_factor': {partial} is not supported (1.0 only)"
        )
    out: dict[str, Any] = {"rope_theta": theta, "rope_type": rtype}
    if rtype in ("linear", "llama3"):
        out["rope_factor"] = float(src.get("factor", 1.0))
    if rtype == "llama3":
        out["rope_low_freq_factor"] = float(src.get("low_freq_factor", 1.0))
        out["rope_high_freq_factor"] = float(src.get("high_freq_factor", 4.0))
        out["rope_original_max"] = int(src.get("original_max_position_embeddings", 8192))
    return out


def _weight_index(d: Path) -> dict[str, str]:
    """Tensor name → safetensors file (sharded: the index; else the one ``*.safetensors``)."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        wmap = _read_json(index, "the index").get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise FrontendError(f"{index} field 'weight_map': missing or empty")
        for f in sorted(set(wmap.values())):
            if not (d / f).is_file():
                raise FrontendError(f"{index} field 'weight_map': shard {f} does not exist")
        return {str(k): str(v) for k, v in wmap.items()}
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FrontendError(
            f"{d}: no *.safetensors weights (and no model.safetensors.index.json); "
            "save with save_pretrained(safe_serialization=True)"
        )
    from safetensors import safe_open

    out: dict[str, str] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                out.update({k: f.name for k in sf.keys()})  # noqa: SIM118 - not a dict
        except Exception as e:  # a corrupt header
            raise FrontendError(f"{f}: not a safetensors file ({e})") from None
    return out


def expected_weights(settings: Mapping[str, Any]) -> list[str]:
    """The checkpoint tensor names a Llama-family decoder with ``settings`` reads."""
    fam = settings.get("family", "llama")
    if fam == "gpt2":
        names = [
            f"transformer.{n}" for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")
        ]
        for i in range(int(settings["n_layers"])):
            p = f"transformer.h.{i}."
            for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                names += [p + m + ".weight", p + m + ".bias"]
        return names + ([] if settings.get("tie_embeddings") else ["lm_head.weight"])
    if fam == "phi":
        names = ["model.embed_tokens.weight", "model.final_layernorm.weight",
                 "model.final_layernorm.bias", "lm_head.weight", "lm_head.bias"]  # fmt: skip
        for i in range(int(settings["n_layers"])):
            p = f"model.layers.{i}."
            for m in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.dense", "mlp.fc1", "mlp.fc2"):  # fmt: skip
                names += [p + m + ".weight", p + m + ".bias"]
        return names
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(int(settings["n_layers"])):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        if settings.get("fused_proj"):  # Phi-3
            names += [p + "self_attn.qkv_proj.weight", p + "self_attn.o_proj.weight"]
            names += [p + "mlp.gate_up_proj.weight", p + "mlp.down_proj.weight"]
            continue
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        if settings.get("qkv_bias"):
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    if not settings.get("tie_embeddings"):
        names.append("lm_head.weight")
    return names


def read_hf_dir(path: str | Path, max_len: int | None = None) -> HFCheckpoint:
    """Check a Hugging Face model directory and describe it (no weights are read).

    Args:
        path: the directory.
        max_len: the context the bundle will be compiled for (checked against the model's
            ``max_position_embeddings`` and a Mistral ``sliding_window``).

    Raises:
        FrontendError: one line naming the file and field at fault.
    """
    d = Path(path)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FrontendError(f"{d}: no config.json (not a Hugging Face model directory)")
    cfg = _read_json(cfg_path, "the config")
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise FrontendError(
            f"{cfg_path} field 'model_type': {mt!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if mt == "gpt2":  # GPT-2's own field names, as the checks below read them
        n_embd = cfg.get("n_embd")
        cfg = {**cfg, "hidden_size": n_embd, "num_hidden_layers": cfg.get("n_layer"),
               "num_attention_heads": cfg.get("n_head"),
               "intermediate_size": cfg.get("n_inner") or (4 * n_embd if isinstance(n_embd, int) else None),
               "max_position_embeddings": cfg.get("n_positions", 1024),
               "hidden_act": cfg.get("activation_function", "gelu_new"),
               "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}  # fmt: skip
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size")  # fmt: skip
    for k in need:
        if not isinstance(cfg.get(k), int) or cfg[k] <= 0:
            raise FrontendError(f"{cfg_path} field {k!r}: missing or not a positive integer")
    act = cfg.get("hidden_act", "silu")
    gelu = mt in ("gpt2", "phi")
    if (act not in _GELU) if gelu else (act != "silu"):
        field = "activation_function" if mt == "gpt2" else "hidden_act"
        ok = ", ".join(_GELU) if gelu else "silu"
        raise FrontendError(f"{cfg_path} field '{field}': {act!r} is not supported ({ok})")
    if mt == "phi" and cfg.get("qk_layernorm"):
        raise FrontendError(f"{cfg_path} field 'qk_layernorm': not supported")
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv:
        raise FrontendError(
            f"{cfg_path} field 'num_key_value_heads': {kv} does not divide {heads} heads"
        )
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    maxpos = int(cfg.get("max_position_embeddings") or 2048)
    if max_len is not None and max_len > maxpos:
        raise FrontendError(
            f"{cfg_path} field 'max_position_embeddings': the model takes {maxpos} tokens; "
            f"the requested context is {max_len}"
        )
    sw = cfg.get("sliding_window")
    if mt == "mistral" and sw and cfg.get("use_sliding_window", True) is not False:
        if max_len is not None and max_len > int(sw):
            raise FrontendError(
                f"{cfg_path} field 'sliding_window': {sw} is shorter than the requested context "
                f"{max_len}; sliding-window attention is not implemented (compile with "
                f"--max-len {sw} or less)"
            )
    bias = bool(cfg.get("attention_bias", mt == "qwen2"))
    if cfg.get("mlp_bias"):
        raise FrontendError(f"{cfg_path} field 'mlp_bias': MLP biases are not supported")
    settings: dict[str, Any] = {
        "vocab_size": int(cfg["vocab_size"]),
        "d_model": int(cfg["hidden_size"]),
        "n_layers": int(cfg["num_hidden_layers"]),
        "n_heads": heads,
        "n_kv_heads": kv,
        "d_ff": int(cfg["intermediate_size"]),
        "attn_head_dim": head_dim,
        "rms_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "qkv_bias": bias,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "fused_proj": mt == "phi3",
        **_rope_settings(cfg, cfg_path, partial_ok=mt == "phi"),
    }
    if gelu:
        settings.update(family=mt, norm="layer", mlp="gelu", o_bias=True, qkv_bias=True,
                        rms_eps=float(cfg.get("layer_norm_eps", cfg.get("layer_norm_epsilon", 1e-5))))  # fmt: skip
    if mt == "gpt2":
        settings.update(positions="learned", rope_type="default")
    if mt == "phi":
        settings.update(parallel=True, lm_head_bias=True,
                        rotary_dim=int(float(cfg.get("partial_rotary_factor", 0.5)) * head_dim))  # fmt: skip
    weights = _weight_index(d)
    missing = [n for n in expected_weights(settings) if n not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FrontendError(f"{d}: weight tensor {missing[0]!r} is missing{more}")
    tok_path = d / "tokenizer.json"
    if not tok_path.is_file():
        raise FrontendError(f"{d}: no tokenizer.json (a `tokenizers` tokenizer is required)")
    tok_text = tok_path.read_text()
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tok_text)
    except Exception as e:
        raise FrontendError(f"{tok_path}: not a tokenizers tokenizer ({e})") from None
    nvocab = tok.get_vocab_size(with_added_tokens=True)
    if nvocab > settings["vocab_size"]:
        raise FrontendError(
            f"{tok_path}: the tokenizer has {nvocab} tokens but {cfg_path} field 'vocab_size' "
            f"is {settings['vocab_size']} (tokenizer/vocab mismatch)"
        )
    tcfg_path = d / "tokenizer_config.json"
    tcfg = _read_json(tcfg_path, "the tokenizer config") if tcfg_path.is_file() else {}
    tmpl_path = d / "chat_template.jinja"  # transformers 5 saves the template beside it
    if "chat_template" not in tcfg and tmpl_path.is_file():
        tcfg["chat_template"] = tmpl_path.read_text()
    gpath = d / "generation_config.json"
    gcfg = _read_json(gpath, "the generation config") if gpath.is_file() else {}
    return HFCheckpoint(d.resolve(), str(mt), cfg, settings, weights, tok_text, tcfg, gcfg, maxpos)


def iter_tensors(path: str | Path, names: list[str]) -> Iterator[tuple[str, Any]]:
    """Stream ``(name, torch tensor)`` for ``names`` from a checkpoint directory, one at a time
    (each shard opened once; only the current tensor is materialised).

    Raises:
        FrontendError: a tensor is missing from the checkpoint.
    """
    from safetensors import safe_open

    d = Path(path)
    where = _weight_index(d)
    by_file: dict[str, list[str]] = {}
    for n in names:
        if n not in where:
            raise FrontendError(f"{d}: weight tensor {n!r} is missing")
        by_file.setdefault(where[n], []).append(n)
    for f, ns in by_file.items():
        with safe_open(str(d / f), framework="pt") as sf:
            for n in ns:
                yield n, sf.get_tensor(n)
