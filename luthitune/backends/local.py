"""The ``local`` backend: a transformers model running in-process, wrapped as a LangChain chat model.

One :class:`LocalRuntime` per weights folder is shared by every caller in the process (graph nodes,
training, evaluation), so the model that is interviewed is the very object that is trained. Generation
is batched with left padding; structured output is constrained by xgrammar against the pydantic
schema, so the JSON is well-formed by construction and pydantic validates the content.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
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

log = logging.getLogger(__name__)

_ROLE = {"human": "user", "ai": "assistant", "system": "system", "tool": "user", "chat": "user"}


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        role = _ROLE.get(m.type, "user")
        content = m.content if isinstance(m.content, str) else json.dumps(m.content)
        out.append({"role": role, "content": content})
    return out


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool  # False when max_new_tokens cut the answer


class LocalRuntime:
    """A causal LM and its tokenizer on one device, with optional LoRA adapters on the same weights."""

    def __init__(self, model_dir: Path, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from luthitune.logs import quiet_transformers

        quiet_transformers()
        t0 = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device)
        self.model.eval()
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
    ) -> list[Generation]:
        """Generate one reply per conversation, all in one padded batch."""
        import torch

        if not conversations:
            return []
        tok = self.tokenizer
        texts = [tok.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "repetition_penalty": repetition_penalty,
        }
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self.lock:
            if schemas is not None and any(s is not None for s in schemas):
                from xgrammar.contrib.hf import LogitsProcessor

                if any(s is None for s in schemas):
                    raise ValueError("A batch must be all structured or all free text")
                # A LogitsProcessor is single-use: build a new one for every generate() call.
                kwargs["logits_processor"] = [LogitsProcessor([self.grammar(s) for s in schemas])]
            if seed is not None:
                torch.manual_seed(seed)
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for i in range(len(texts)):
            new = out[i, prompt_len:].tolist()
            finished = tok.eos_token_id in new
            if finished:
                new = new[: new.index(tok.eos_token_id)]
            text = tok.decode(new, skip_special_tokens=True).strip()
            prompt_tokens = int(enc["attention_mask"][i].sum())
            results.append(Generation(text, prompt_tokens, len(new) + int(finished), finished))
        return results


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


def get_runtime(model_dir: Path) -> LocalRuntime:
    """The process-wide runtime for ``model_dir``: every caller shares one weights object."""
    key = str(Path(model_dir).resolve())
    with _RUNTIMES_LOCK:
        if key not in _RUNTIMES:
            _RUNTIMES[key] = LocalRuntime(Path(model_dir))
        return _RUNTIMES[key]


class LocalChatModel(BaseChatModel):
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
            # Penalising repeats fights JSON syntax (quotes, braces); only apply it to free text.
            "repetition_penalty": 1.0 if structured else self.repetition_penalty,
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

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        schema = kwargs.get("json_schema")
        convs = [to_chat_dicts(self._convert_input(i).to_messages()) for i in inputs]
        size = self.concurrency
        if isinstance(config, dict) and config.get("max_concurrency"):
            size = int(config["max_concurrency"])
        out: list[Any] = []
        for start in range(0, len(convs), size):
            chunk = convs[start : start + size]
            try:
                with self.runtime.adapter(self.adapter):
                    gens = self.runtime.generate(
                        chunk, schemas=[schema] * len(chunk) if schema else None, **self._gen_kwargs(kwargs)
                    )
                out.extend(self._to_message(g) for g in gens)
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.extend([exc] * len(chunk))
        return out

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable[Any, Any]:
        """Constrained JSON for a pydantic model; ``include_raw`` gives ``{raw, parsed, parsing_error}``."""
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError("The local backend takes a pydantic model class as the schema")
        from luthitune.backends.structured import json_parser

        return self.bind(json_schema=schema.model_json_schema()) | json_parser(schema, include_raw)
