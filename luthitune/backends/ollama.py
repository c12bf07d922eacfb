"""The ``ollama`` backend: ``langchain_ollama.ChatOllama`` against a running ``ollama serve``.

Ollama does not validate structured output or retry; :mod:`luthitune.backends.structured` does both.
Connection failures surface as ``httpx.ConnectError`` or the builtin ``ConnectionError`` depending on
the code path; :func:`translate_error` turns either (and timeouts, and a missing model) into one
:class:`BackendUnavailable` that names the URL and model and says what to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from luthitune.backends.ollama_store import ollama_name
from luthitune.config import Config
from luthitune.errors import BackendUnavailable


def make_chat_ollama(config: Config, model: str | None = None, *, base_url: str | None = None):
    from langchain_ollama import ChatOllama

    s = config.sampling
    return ChatOllama(
        model=ollama_name(model or config.chat_model),  # `ollama:NAME` (as base_model spells it) works here too
        base_url=base_url or config.ollama.base_url,
        temperature=s.temperature,
        top_p=s.top_p,
        num_predict=s.max_new_tokens,
        repeat_penalty=s.repetition_penalty,
        seed=s.seed,
        keep_alive=config.ollama.keep_alive,
        client_kwargs={"timeout": config.ollama.timeout_s},
        # Do not let construction contact the server: doctor and the first call report reachability.
        validate_model_on_init=False,
    )


def unreachable(url: str, model: str, detail: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"Ollama is not reachable at {url} (model {model!r}): {detail}.\n"
        f"Start it with `ollama serve` (and `ollama pull {model}`), or point `ollama.base_url` in "
        f"luthitune.yaml at the right server. To run without Ollama, set `backend: local`."
    )


def missing_model(url: str, model: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"Ollama at {url} does not have the model {model!r}. "
        f"Run `ollama pull {model}`, or set `chat_model` in luthitune.yaml to one listed by `ollama list`."
    )


def translate_error(exc: BaseException, url: str, model: str) -> BaseException:
    """Map transport errors to a user-facing :class:`BackendUnavailable`; return others unchanged."""
    if isinstance(exc, BackendUnavailable):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return unreachable(url, model, "the request timed out")
    if isinstance(exc, (httpx.ConnectError, ConnectionError, httpx.RemoteProtocolError)):
        return unreachable(url, model, f"connection failed ({type(exc).__name__})")
    try:
        from ollama import ResponseError
    except ImportError:  # pragma: no cover
        return exc
    if isinstance(exc, ResponseError) and exc.status_code == 404:
        return missing_model(url, model)
    return exc


@dataclass
class OllamaStatus:
    url: str
    reachable: bool
    version: str | None = None
    models: list[str] = field(default_factory=list)
    model_present: bool = False
    error: str | None = None


def check(config: Config, model: str | None = None, timeout_s: float = 3.0, *, url: str | None = None) -> OllamaStatus:
    """Ask the server (``url``, default ``ollama.base_url``) for its version and model list, within ``timeout_s``."""
    url, model = url or config.ollama.base_url, ollama_name(model or config.chat_model)
    status = OllamaStatus(url=url, reachable=False)
    try:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            status.version = client.get("/api/version").json().get("version")
            status.reachable = True
            tags = client.get("/api/tags").json().get("models", [])
    except (httpx.HTTPError, ConnectionError, ValueError) as exc:
        if isinstance(exc, ValueError):
            status.error = f"{url} answered, but not like an Ollama server ({exc})"
        else:
            status.error = str(translate_error(exc, url, model))
        return status
    status.models = sorted(t.get("name", "") for t in tags)
    wanted = model if ":" in model else f"{model}:latest"
    status.model_present = wanted in status.models or model in status.models
    if not status.model_present:
        status.error = str(missing_model(url, model))
    return status
