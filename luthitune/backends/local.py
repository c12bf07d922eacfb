"""The ``local`` backend: a transformers model running in-process, wrapped as a LangChain chat model.

One :class:`LocalRuntime` per weights folder is shared by every caller in the process (graph nodes,
training, evaluation), so the model that is interviewed is the very object that is trained. Generation
is batched with left padding; structured output is constrained by xgrammar against the pydantic
schema, so the JSON is well-formed by construction and pydantic validates the content.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field

from luthitune.backends.structured import CompletedBatch

log = logging.getLogger(__name__)

_ROLE = {"human": "user", "ai": "assistant", "system": "system", "tool": "user", "chat": "user"}


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        role = _ROLE.get(m.type, "user")
        content = m.content if isinstance(m.content, str) else json.dumps(m.content)
        out.append({"role": role, "content": content})
    return out


class _Abandoned(Exception):
    """The caller of ``batch_as_completed`` stopped reading: the decode loop ends."""


_ABANDONED = object()


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool  # False when max_new_tokens cut the answer


def column_major_weights(model) -> None:
    """Store every linear layer's weight transposed in memory, as the same ``[out, in]`` tensor (a strided view).

    On the CPU, MKL multiplies a few rows (decoding 2-8 sequences) by a weight kept this way up to 2.5x faster
    than by a row-major one (SmolLM2's output layer at 8 rows: 8.9 ms instead of 12.9 ms); with many rows
    (prefill, training) both layouts run at the same speed. Values, shapes and names do not change, so adapters,
    training and evaluation see the same weights. A weight shared by two layers (tied embeddings) is converted
    once, and stays shared.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()


def cancel_points(model) -> None:
    """Make every transformer block of ``model`` a cancellation point: each block's forward pass first calls
    :func:`luthitune.cancel.check`.

    A decode step is a few tens of milliseconds, but one forward pass over long prompts (a prefill) or a training
    batch can take many seconds on a CPU; checking before each of its blocks stops it within one block's share.
    The check is a context-variable read: free next to the block's work. Hooks are not saved with the weights.
    """
    import torch

    from luthitune import cancel

    def check(module, args) -> None:
        cancel.check()

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                block.register_forward_pre_hook(check)


class LocalRuntime:
    """A causal LM and its tokenizer on one device, with optional LoRA adapters on the same weights."""

    def __init__(self, model_dir: Path, device: str | None = None, compute: Any = None):
        """``compute``: the workspace's ``compute`` settings (threads, precision; None: auto for both)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from luthitune.compute import Shape, apply_threads, precision_for
        from luthitune.logs import quiet_transformers

        quiet_transformers()
        t0 = time.perf_counter()
        self.threads = apply_threads(getattr(compute, "threads", "auto"))
        self.model_dir = Path(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device)
        self.model.eval()
        # A runtime choice: the cached float32 files (and their digests) stay as they are.
        self.precision = precision_for(
            getattr(compute, "precision", "auto"), device=self.device, shape=Shape.of(self.model.config)
        )
        if self.precision.bf16:
            self.model.to(torch.bfloat16)
        if self.device == "cpu":
            column_major_weights(self.model)
        cancel_points(self.model)
        self.load_seconds = time.perf_counter() - t0
        self.lock = threading.RLock()
        self.active_adapter: str | None = None
        self._grammar_compiler: Any = None
        self._grammars: dict[str, Any] = {}

    # -- adapters (LoRA on the same weights) --

    @property
    def adapters(self) -> list[str]:
        cfg = getattr(self.model, "peft_config", None)
        return sorted(cfg) if cfg else []

    def load_adapter(self, path: Path | str, name: str) -> None:
        from peft import PeftModel

        with self.lock:
            if name in self.adapters:
                return
            if hasattr(self.model, "peft_config"):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self.model.eval()

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Generate with adapter ``name`` enabled, or with every adapter disabled when ``None``."""
        with self.lock:
            previous = self.active_adapter
            if name is None:
                if self.adapters:
                    with self.model.disable_adapter():
                        self.active_adapter = None
                        try:
                            yield
                        finally:
                            self.active_adapter = previous
                else:
                    yield
                return
            if name not in self.adapters:
                raise KeyError(f"Adapter {name!r} is not loaded; loaded: {self.adapters or 'none'}")
            self.model.set_adapter(name)
            self.active_adapter = name
            try:
                yield
            finally:
                self.active_adapter = previous
                if previous is not None:
                    self.model.set_adapter(previous)

    # -- structured output --

    def grammar(self, schema: dict[str, Any]) -> Any:
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
                self._grammar_compiler = xgr.GrammarCompiler(info)
            # Compile the schema as given: property order is the order the model writes the fields in.
            self._grammars[key] = self._grammar_compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        return self._grammars[key]

    def syntax_tokens(self) -> Any:
        """A vocabulary mask of the tokens JSON's structure is made of (quotes, braces, brackets, whitespace): the
        repetition penalty leaves them alone in structured answers, where they must repeat, and still applies to
        the words inside the strings, where a small model otherwise loops ("I am a subject, I am a subject...")."""
        if getattr(self, "_syntax", None) is None:
            import torch

            vocab = self.model.config.vocab_size
            mask = torch.zeros(vocab, dtype=torch.bool)
            for i in range(min(vocab, len(self.tokenizer))):
                piece = self.tokenizer.decode([i])
                mask[i] = not piece.strip() or any(c in piece for c in '"{}[]')
            self._syntax = mask
        return self._syntax

    # -- generation --

    def generate(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        schemas: Sequence[dict[str, Any] | None] | None = None,
        min_new_tokens: int | None = None,
        slots: int | None = None,
        on_done: Callable[[int, Generation], Sequence[dict[str, str]] | None] | None = None,
    ) -> list[Generation]:
        """One reply per conversation, with continuous batching: at most ``slots`` (default: all) sequences
        run together, and a finished one hands its slot to the next prompt. ``on_done(index, generation)``
        is called as each one finishes; a conversation it returns is asked next for the same index (a retry
        joins the running batch), and the result holds each index's last reply."""
        import torch

        from luthitune.backends.decoding import ContinuousBatcher

        if not conversations:
            return []
        tok = self.tokenizer

        def encode(conversation: Sequence[dict[str, str]]) -> list[int]:
            p = tok.apply_chat_template(
                list(conversation), add_generation_prompt=True, tokenize=True, return_dict=False
            )
            return list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p)

        prompts = [encode(c) for c in conversations]
        structured = schemas is not None and any(s is not None for s in schemas)
        if structured and any(s is None for s in schemas):
            raise ValueError("A batch must be all structured or all free text")
        eos = self.model.generation_config.eos_token_id
        eos_ids = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        batcher = ContinuousBatcher(
            self.model, pad_id=tok.pad_token_id, eos_ids=eos_ids, vocab_size=self.model.config.vocab_size
        )
        results: list[Generation | None] = [None] * len(prompts)

        def finish(seq) -> list[int] | None:
            new = [t for t in seq.generated if t not in eos_ids]
            g = Generation(
                tok.decode(new, skip_special_tokens=True).strip(), len(seq.prompt), len(seq.generated), seq.finished
            )
            results[seq.item] = g
            follow = on_done(seq.item, g) if on_done else None
            return encode(follow) if follow else None

        with self.lock:
            grammars = [self.grammar(s) for s in schemas] if structured else None
            with torch.inference_mode():
                batcher.run(
                    prompts,
                    slots=slots or len(prompts),
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    repetition_penalty=repetition_penalty,
                    grammars=grammars,
                    penalty_exempt=self.syntax_tokens() if structured and repetition_penalty != 1.0 else None,
                    min_new_tokens=min_new_tokens or 0,
                    seed=seed,
                    on_done=finish,
                )
        return results  # type: ignore[return-value]


def schema_token_budget(schema: dict[str, Any]) -> int:
    """Tokens that always suffice for the longest valid answer to a flat schema.

    Counted as one token per allowed character (digits and punctuation can tokenize that finely):
    generation stops when the grammar completes, so the headroom costs nothing on normal answers.
    """
    props = schema.get("properties", {})
    chars = sum(int(p.get("maxLength", 200)) if p.get("type") == "string" else 40 for p in props.values())
    return chars + 16 * len(props) + 16


_RUNTIMES: dict[str, LocalRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def get_runtime(model_dir: Path, compute: Any = None) -> LocalRuntime:
    """The process-wide runtime for ``model_dir``: every caller shares one weights object (``compute`` applies
    when it is first loaded)."""
    key = str(Path(model_dir).resolve())
    with _RUNTIMES_LOCK:
        if key not in _RUNTIMES:
            _RUNTIMES[key] = LocalRuntime(Path(model_dir), compute=compute)
        return _RUNTIMES[key]


class LocalChatModel(CompletedBatch, BaseChatModel):
    """LangChain chat model over a :class:`LocalRuntime`.

    ``batch()`` runs one padded ``generate()`` per chunk of ``concurrency`` inputs instead of a thread
    per input. ``with_structured_output(Schema)`` constrains decoding to the schema's JSON.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runtime: Any = Field(exclude=True)
    model_name: str = "smollm2-135m-instruct"
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    seed: int | None = None
    concurrency: int = 4
    adapter: str | None = None  # None: the base weights (every adapter disabled)
    # generate_structured may send a retry back into batch_as_completed for the item just yielded (see there);
    # False: retries wait for a new round after the slowest answer, as on the other backends (`bench generate`).
    follow_ups: bool = True

    @property
    def _llm_type(self) -> str:
        return "luthitune-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_dir": str(self.runtime.model_dir)}

    def _gen_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        schema = kwargs.get("json_schema")
        structured = schema is not None
        budget = kwargs.get("max_new_tokens", self.max_new_tokens)
        if structured:
            # Enough room to finish the object: the grammar closes each string at its max_length.
            budget = max(budget, schema_token_budget(schema))
        return {
            "max_new_tokens": budget,
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": self.top_p,
            # In structured answers the penalty spares JSON's syntax tokens (LocalRuntime.syntax_tokens).
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    def _to_message(self, g: Generation) -> AIMessage:
        return AIMessage(
            content=g.text,
            usage_metadata={
                "input_tokens": g.prompt_tokens,
                "output_tokens": g.completion_tokens,
                "total_tokens": g.prompt_tokens + g.completion_tokens,
            },
            response_metadata={
                "model_name": self.model_name,
                "done_reason": "stop" if g.finished else "length",
                "adapter": self.runtime.active_adapter,
            },
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        schema = kwargs.get("json_schema")
        with self.runtime.adapter(self.adapter):
            [g] = self.runtime.generate(
                [to_chat_dicts(messages)], schemas=[schema] if schema else None, **self._gen_kwargs(kwargs)
            )
        return ChatResult(generations=[ChatGeneration(message=self._to_message(g))])

    def batch_as_completed(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, AIMessage)`` as each answer finishes: one continuous batch with at most
        ``max_concurrency`` (default ``concurrency``) sequences in flight, run on a worker thread.

        The caller may ``send()`` a follow-up input (a retry with its feedback) in reply to an answer: it joins the
        running batch for the same index, whose next answer is yielded later. The decode loop waits for that reply
        before its next step, so which sequences run together, and so what they sample, does not depend on thread
        timing."""
        if not inputs:
            return
        schema = kwargs.get("json_schema")
        convs = [to_chat_dicts(self._convert_input(i).to_messages()) for i in inputs]
        size = self.concurrency
        first = config[0] if isinstance(config, (list, tuple)) and config else config  # bindings pass one per input
        if isinstance(first, dict) and first.get("max_concurrency"):
            size = int(first["max_concurrency"])
        finished: queue.Queue = queue.Queue()
        replies: queue.Queue = queue.Queue()
        open_items = set(range(len(convs)))  # not answered yet, or answered with a follow-up still to come

        def handoff(i: int, g: Generation) -> list[dict[str, str]] | None:
            finished.put((i, self._to_message(g)))
            follow = replies.get()
            if follow is _ABANDONED:
                raise _Abandoned
            return to_chat_dicts(self._convert_input(follow).to_messages()) if follow is not None else None

        def work() -> None:
            try:
                with self.runtime.adapter(self.adapter):
                    self.runtime.generate(
                        convs,
                        schemas=[schema] * len(convs) if schema else None,
                        slots=size,
                        on_done=handoff,
                        **self._gen_kwargs(kwargs),
                    )
            except _Abandoned:
                pass
            except BaseException as exc:
                finished.put((None, exc))
            finished.put((None, None))

        # In the caller's context: the run id bound by ``cancel.scope`` reaches the decode loop's cancel checks.
        worker = threading.Thread(
            target=contextvars.copy_context().run, args=(work,), name="luthitune-generate", daemon=True
        )
        worker.start()
        try:
            while True:
                i, res = finished.get()
                if i is not None:
                    follow = yield i, res
                    if follow is None:
                        open_items.discard(i)
                    replies.put(follow)
                    continue
                if res is None:
                    break
                if not return_exceptions:
                    worker.join()
                    raise res
                for j in sorted(open_items):
                    yield j, res
                break
        finally:
            replies.put(_ABANDONED)  # a caller that stops early releases the decode loop (and the weights' lock)
        worker.join()

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable[Any, Any]:
        """Constrained JSON for a pydantic model; ``include_raw`` gives ``{raw, parsed, parsing_error}``."""
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError("The local backend takes a pydantic model class as the schema")
        from luthitune.backends.structured import json_parser

        return self.bind(json_schema=schema.model_json_schema()) | json_parser(schema, include_raw)
