"""The ``ollama`` backend: ``langchain_ollama.ChatOllama`` against a running ``ollama serve``.

Ollama does not validate structured output or retry; :mod:`luthitune.backends.structured` does both.
Connection failures surface as ``httpx.ConnectError`` or the builtin ``ConnectionError`` depending on
the code path; :func:`translate_error` turns either (and timeouts, and a missing model) into one
:class:`BackendUnavailable` that names the URL and model and says what to run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import httpx

from luthitune.backends.ollama_store import ollama_name
from luthitune.config import Config
from luthitune.errors import BackendUnavailable


@functools.cache
def _chat_ollama_class():
    from langchain_ollama import ChatOllama

    class ServerChatOllama(ChatOllama):
        """``ChatOllama`` whose calls are retried a bounded number of times when the server fails transiently (no
        connection, a reset, a timeout, a 5xx such as "model runner has unexpectedly stopped"), and reported while
        they run long. The host pool's clients do not retry: the pool sends the item to another host instead."""

        retry: bool = True

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            from luthitune.backends.hosts import RETRY_DELAYS_S, call_with_retries

            return call_with_retries(
                lambda: super(ServerChatOllama, self)._generate(messages, stop, run_manager, **kwargs),
                str(self.base_url),
                self.model,
                RETRY_DELAYS_S if self.retry else (),
            )

    return ServerChatOllama


def make_chat_ollama(config: Config, model: str | None = None, *, base_url: str | None = None, retries: bool = True):
    s = config.sampling
    return _chat_ollama_class()(
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
        retry=retries,
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


def timed_out(url: str, model: str, timeout_s: float | None) -> BackendUnavailable:
    within = f" within {timeout_s:g} s" if timeout_s else ""
    return BackendUnavailable(
        f"Ollama at {url} did not answer{within} for model {model!r} (it was reached, but the answer took too long, "
        "after retries).\nA large model on a slow machine can need more: raise `ollama.timeout_s` in luthitune.yaml, "
        "or check the server's load. Everything finished so far is saved: `luthitune resume RUN` redoes the step."
    )


def server_failed(url: str, model: str, status: int, detail: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"Ollama at {url} failed for model {model!r}: it answered {status} ({detail}), after retries. This is the "
        "server's failure, not the model's answer: nothing was quarantined.\nCheck the server's log (the terminal "
        f"running `ollama serve`, or `journalctl -u ollama`): the model may not fit in memory (`ollama ps`, "
        f"`ollama run {model}` shows it). Everything finished so far is saved: `luthitune resume RUN` redoes the step."
    )


def translate_error(exc: BaseException, url: str, model: str, *, timeout_s: float | None = None) -> BaseException:
    """Map transport and server failures to a user-facing :class:`BackendUnavailable`; return others unchanged.

    A 4xx other than 404 (a request the server refuses) is the item's failure, not the server's."""
    if isinstance(exc, BackendUnavailable):
        return exc
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return timed_out(url, model, timeout_s)
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return unreachable(url, model, f"connection failed ({type(exc).__name__})")
    try:
        from ollama import ResponseError
    except ImportError:  # pragma: no cover
        return exc
    if isinstance(exc, ResponseError) and exc.status_code == 404:
        return missing_model(url, model)
    if isinstance(exc, ResponseError) and (exc.status_code >= 500 or exc.status_code in (408, 429)):
        return server_failed(url, model, exc.status_code, str(exc.error).strip().splitlines()[0][:200])
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
