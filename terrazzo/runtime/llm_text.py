"""Text in, text out for LLM bundles (``terrazzo compile MODEL_DIR``): tokenizer, chat template,
chunked prefill, decode loop, EOS / stop strings / ``max_tokens``, greedy or seeded sampling.

The bundle's ``plan.json["llm"]`` carries the checkpoint's tokenizer (``tokenizers``), its
``tokenizer_config.json`` (``chat_template``, rendered with jinja2 the way transformers'
``apply_chat_template`` does: sandboxed, ``trim_blocks``/``lstrip_blocks``, the special tokens
as variables, ``add_generation_prompt``) and EOS ids. Stage 0 is the prefill phase, stage 1 the
decode phase; each is a separate compiled library (here two stage runners; served, two workers).

Prompt length: the prefill phase has a static chunk of ``prompt_len`` tokens (right-padded); a
longer prompt runs its first ``prompt_len`` tokens through prefill and each remaining token
through a decode step (which writes that token's K/V row), so any prompt up to the bundle's
``max_len`` works. ``prompt + max_tokens`` is capped at ``max_len``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from terrazzo.errors import ServingError

Phase = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the next token is chosen; ``temperature == 0`` is greedy (the default)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], **special: Any) -> str:
    """Render a chat template as transformers' ``apply_chat_template`` does (generation prompt on)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=list(messages), add_generation_prompt=True, **special
        )
    except TemplateError as e:
        raise ServingError(f"chat template: {e}") from None


def _special(tcfg: Mapping[str, Any], key: str) -> str | None:
    v = tcfg.get(key)
    if isinstance(v, Mapping):  # older AddedToken form
        v = v.get("content")
    return v if isinstance(v, str) else None


class TextGenerator:
    """Tokenise, prefill, decode, detokenise for an LLM bundle's ``plan.json["llm"]`` section.

    Args:
        llm: the ``llm`` section.
        prefill / decode: the two phases as callables over dicts of arrays (stage runners here,
            remote workers when served).
    """

    def __init__(
        self, llm: Mapping[str, Any], prefill: Phase, decode: Phase, batch: Any = None
    ) -> None:
        from tokenizers import Tokenizer

        self.llm = dict(llm)
        self.config = dict(llm["config"])
        self.max_len = int(self.config["max_len"])
        self.prompt_len = int(self.config["prompt_len"])
        self.vocab = int(self.config["vocab_size"])
        self.tokenizer = Tokenizer.from_str(str(llm["tokenizer_json"]))
        self.tokenizer_config: dict[str, Any] = dict(llm.get("tokenizer_config") or {})
        self.eos = {int(x) for x in llm.get("eos_token_ids") or ()}
        self.prefill, self.decode = prefill, decode
        # continuous batching: a terrazzo.runtime.llm_batch.RemoteBatchDecode (decode joins the
        # engine's running batch instead of stepping alone)
        self.batch = batch

    # -- text ------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt (special tokens as the tokenizer's post-processor adds)."""
        return list(self.tokenizer.encode(prompt, add_special_tokens=True).ids)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of chat messages through the checkpoint's chat template."""
        tmpl = self.tokenizer_config.get("chat_template")
        if isinstance(tmpl, list):  # named templates: the default one
            tmpl = next((t["template"] for t in tmpl if t.get("name") == "default"), None)
        if not isinstance(tmpl, str):
            raise ServingError("the checkpoint's tokenizer_config.json has no chat_template")
        special = {k: _special(self.tokenizer_config, k)
                   for k in ("bos_token", "eos_token", "unk_token", "pad_token")}  # fmt: skip
        text = render_chat(tmpl, messages, **special)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode_text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- tokens ----------------------------------------------------------------------------
    def _check(self, ids: Sequence[int]) -> None:
        n = len(ids)
        if n == 0:
            raise ServingError("the prompt is empty (no tokens)")
        if n >= self.max_len:
            raise ServingError(
                f"the prompt has {n} tokens; the bundle's context (max_len) is {self.max_len}"
            )
        bad = [t for t in ids if not 0 <= t < self.vocab]
        if bad:
            raise ServingError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})")

    def _step(self, token: int, pos: int, k: np.ndarray, v: np.ndarray,
              decode: Phase | None = None) -> Mapping[str, np.ndarray]:  # fmt: skip
        return (decode or self.decode)({"token": np.array([[token]], np.int64),
                            "pos": np.array([pos], np.int64), "k_cache": k, "v_cache": v})  # fmt: skip

    def stream_ids(self, ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        """Yield generated token ids one at a time (stops at EOS — which is yielded —, at
        ``max_tokens`` or at the context's end)."""
        self._check(ids)
        # a sequence keeps the decode phase it started on to its end: a hot swap
        # (runtime.adapt.llm_swap) moves only sequences that start after it
        decode, batch = self.decode, self.batch
        n = len(ids)
        first = list(ids[: self.prompt_len])
        padded = np.zeros((1, self.prompt_len), np.int64)
        padded[0, : len(first)] = first
        st = self.prefill({"tokens": padded, "length": np.array([len(first)], np.int64)})
        logits, k, v = st["logits"], st["k_cache"], st["v_cache"]
        if batch is not None:
            yield from self._stream_batched(ids, st, params, batch)
            return
        for pos in range(len(first), n):  # the rest of a long prompt: one decode step each
            st = self._step(int(ids[pos]), pos, k, v, decode)
            logits, k, v = st["logits"], st["k_cache"], st["v_cache"]
        rng = np.random.default_rng(params.seed)
        budget = min(int(params.max_tokens), self.max_len - n)
        for i in range(budget):
            tok = self._choose(np.asarray(logits)[0], params, rng)
            yield tok
            if (tok in self.eos and not params.ignore_eos) or i == budget - 1:
                return
            st = self._step(tok, n + i, k, v, decode)
            logits, k, v = st["logits"], st["k_cache"], st["v_cache"]

    def _stream_batched(
        self, ids: Sequence[int], st: Mapping[str, np.ndarray], params: SamplingParams,
        batch: Any = None,
    ) -> Iterator[int]:  # fmt: skip
        """The decode half through the continuous-batching engine: join, then poll."""
        from terrazzo.runtime.llm_batch import Sampling

        batch = batch if batch is not None else self.batch

        first = min(len(ids), self.prompt_len)
        sp = Sampling(params.max_tokens, params.temperature, params.top_p, params.top_k,
                      params.seed, params.ignore_eos)  # fmt: skip
        sid = batch.new_session()
        batch.join(sid, st["k_cache"], st["v_cache"], first, np.asarray(st["logits"])[0],
                        ids[first:], sp)  # fmt: skip
        done = False
        try:
            while not done:
                toks, done = batch.poll(sid)
                yield from toks
        finally:
            if not done:  # the consumer stopped early (a stop string): leave the batch now
                batch.cancel(sid)

    @staticmethod
    def _choose(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
        from terrazzo.runtime.llm_batch import choose  # one sampler for both decode paths

        return choose(logits, p, rng)

    def stream_text(self, ids: Sequence[int], params: SamplingParams) -> Iterator[tuple[int, str]]:
        """Yield ``(token id, text delta)``; stop strings end the stream (their text is cut).

        A delta that would end inside a UTF-8 sequence waits for the next token; text still
        held back when generation ends comes last as ``(-1, rest)``.
        """
        out: list[int] = []
        sent = text = ""
        for tok in self.stream_ids(ids, params):
            out.append(tok)
            text = self.decode_text(out)
            cut = min((text.find(s) for s in params.stop if s and s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
            if text.endswith("\ufffd") and cut < 0:  # an incomplete UTF-8 sequence: wait
                delta = ""
            else:
                delta, sent = text[len(sent) :], text
            yield tok, delta
            if cut >= 0:
                return
        if text != sent:
            yield -1, text[len(sent) :]

    def generate(self, ids: Sequence[int], params: SamplingParams) -> tuple[list[int], str, str]:
        """All generated ids, the text and the finish reason (``stop`` or ``length``)."""
        toks: list[int] = []
        text = ""
        for tok, delta in self.stream_text(ids, params):
            if tok >= 0:
                toks.append(tok)
            text += delta
        stopped = bool(toks) and (
            (toks[-1] in self.eos and not params.ignore_eos) or len(toks) < params.max_tokens
        )
        return toks, text, "stop" if stopped else "length"


def open_generator(bundle: Any) -> TextGenerator:
    """A :class:`TextGenerator` over an open LLM bundle's own prefill and decode stages."""
    pj = bundle.plan_json or {}
    llm = pj.get("llm")
    if not llm:
        raise ServingError(f"{bundle.path}: not an LLM bundle (no plan.json llm section)")
    stages = llm["stages"]
    return TextGenerator(
        llm, bundle.load_stage(int(stages["prefill"])), bundle.load_stage(int(stages["decode"]))
    )


def decode_session(path: str, index: int, trust_key: Any = None, keep: int = 8) -> Any:
    """Worker runner for the decode phase that keeps each request's KV cache between steps.

    Inputs ``token``, ``pos``, ``k_cache``, ``v_cache`` and ``session`` (int64 ``[1]``): a
    non-empty cache (the prefill's, handed over once) starts or replaces the session's cache;
    an empty one continues from the cache the session left. Returns ``logits`` and empty
    ``k_cache``/``v_cache`` (the cache stays here). The ``keep`` most recent sessions are kept.
    """
    from collections import OrderedDict

    from terrazzo.bundle import open_bundle

    if isinstance(trust_key, Mapping) and "hex" in trust_key:
        trust_key = bytes.fromhex(trust_key["hex"])
    stage = open_bundle(path, trust_key=trust_key).load_stage(int(index))
    caches: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
    empty = np.zeros((0,), np.float32)

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sid = int(np.asarray(values["session"]).reshape(-1)[0])
        k, v = np.asarray(values["k_cache"]), np.asarray(values["v_cache"])
        if k.size == 0:
            if sid not in caches:
                raise ServingError(f"decode session {sid} has no KV cache (hand it over first)")
            k, v = caches[sid]
        out = stage({"token": values["token"], "pos": values["pos"], "k_cache": k, "v_cache": v})
        caches[sid] = (out["k_cache"], out["v_cache"])
        caches.move_to_end(sid)
        while len(caches) > keep:
            caches.popitem(last=False)
        return {"logits": out["logits"], "k_cache": empty, "v_cache": empty}

    return run


class SessionDecode:
    """The decode phase over a ``decode_session`` worker: the KV cache crosses once per
    request (with its first step) and stays on the decode worker afterwards."""

    def __init__(self, remote: Phase) -> None:
        self.remote = remote
        self.session = 0
        self._sent: int | None = None

    def __call__(self, values: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        k = np.asarray(values["k_cache"])
        if k.size:  # a fresh prefill cache: a new session, handed over now
            self.session += 1
        out = self.remote({**values, "session": np.array([self.session], np.int64)})
        return {"logits": out["logits"], "k_cache": out["k_cache"], "v_cache": out["v_cache"]}
