"""One factory for chat models: every node talks to a LangChain ``BaseChatModel``, whatever the backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from luthitune.backends.embedded import ensure_cached, is_embedded
from luthitune.errors import ConfigError
from luthitune.workspace import Workspace

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


def local_model_dir(ws: Workspace, name: str | None = None) -> Path:
    """Folder of the local weights: the cached embedded model, the GGUF an Ollama model serves (``ollama:NAME``,
    dequantized and cached by its digest), or a local folder of transformers weights."""
    name = name or ws.config.chat_model
    if is_embedded(name):
        return ensure_cached(ws.base_cache_dir)
    from luthitune.backends.ollama_store import ensure_weights, is_ollama_ref

    if is_ollama_ref(name):
        return ensure_weights(ws.base_cache_dir, name, ws.config.ollama.base_url)
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = ws.root / path
    if path.is_dir():
        return path
    raise ConfigError(
        f"chat_model {name!r} is not the embedded model nor a folder of transformers weights "
        f"(looked for {path}). Use `smollm2-135m-instruct`, a local model folder, `ollama:NAME[:TAG]` (the weights "
        f"an Ollama model serves), or `backend: ollama`."
    )


def local_runtime(ws: Workspace, name: str | None = None):
    from luthitune.backends.local import get_runtime

    return get_runtime(local_model_dir(ws, name), ws.config.compute)


def make_chat_model(ws: Workspace, *, model: str | None = None) -> BaseChatModel:
    """The configured backend's chat model, with the workspace's sampling and concurrency settings."""
    cfg = ws.config
    if cfg.backend in ("ollama", "openai") and len(cfg.hosts()) > 1:
        from luthitune.backends.hosts import make_host_pool

        return make_host_pool(cfg, model)  # several servers: one chat model that spreads the work over them
    if cfg.backend == "ollama":
        from luthitune.backends.ollama import make_chat_ollama

        return make_chat_ollama(cfg, model, base_url=cfg.hosts()[0].url)
    if cfg.backend == "openai":
        from luthitune.backends.openai import make_chat_openai

        return make_chat_openai(cfg, model, base_url=cfg.hosts()[0].url)
    if cfg.backend == "local":
        from luthitune.backends.local import LocalChatModel

        s = cfg.sampling
        return LocalChatModel(
            runtime=local_runtime(ws, model),
            model_name=model or cfg.chat_model,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed,
            concurrency=cfg.concurrency,
        )
    raise ConfigError(f"Unknown backend {cfg.backend!r}; use 'local', 'ollama' or 'openai'.")  # pragma: no cover


def limit_tokens(llm: BaseChatModel, n: int) -> BaseChatModel:
    """``llm`` with its answers cut at ``n`` new tokens, or at the workspace's own ``sampling.max_new_tokens`` where
    that is lower (it caps every answer), whatever the backend calls that setting (a pool of hosts keeps its
    clients' own limit)."""
    fields = type(llm).model_fields
    for name in ("max_new_tokens", "num_predict", "max_tokens"):
        if name in fields:
            current = getattr(llm, name, None)
            return llm.model_copy(update={name: min(n, current) if isinstance(current, int) and current > 0 else n})
    return llm
