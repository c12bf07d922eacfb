"""Several generation hosts behind one chat model.

:class:`HostPool` is a LangChain ``BaseChatModel`` that owns one real client per server (``ChatOllama`` or the
openai backend's ``OpenAICompatibleChat``) and spreads the work of a batch over them:

- each host has its own limit of requests in flight, and the batch's ``max_concurrency`` caps the total;
- a new item goes to the healthy host with the most free room (in proportion to its limit);
- a host that fails (connection error, timeout, a 5xx, 404 or 429, a refused key) is left out for
  ``cooldown_s``; the item it failed is put back at the head of the queue and goes to another host. After its
  cool-down the host gets one probe request at a time until one succeeds;
- each input is answered exactly once (an answer that comes late from a host already out is still a good
  answer; a failed one is never yielded, only redone), and the answer's ``response_metadata["host"]`` names
  the server that produced it;
- when every host is out at the same time, the batch stops with :class:`BackendUnavailable` naming each host and
  its last error: nothing is quarantined as the model's failure, and ``luthitune resume`` continues later.

Why a chat model and not a scheduler in the nodes: every node and the benchmark already hand their work to
:func:`~luthitune.backends.structured.generate_structured`, which calls ``batch_as_completed``; the pool slots in
there, so retries, validation and storing each item the moment it is final stay one code path. With one host the
factory returns the plain client and none of this is in the way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.runnables.config import ContextThreadPoolExecutor
from pydantic import BaseModel, ConfigDict, Field

from luthitune.backends.structured import CompletedBatch
from luthitune.config import Config
from luthitune.errors import BackendUnavailable

log = logging.getLogger("luthitune.hosts")

HOST_KEY = "host"  # response_metadata key naming the server that produced an answer


@dataclass
class HostState:
    """One server's health, shared by every copy of the pool (``model_copy`` keeps the same objects)."""

    url: str
    limit: int
    in_flight: int = 0
    down_until: float = 0.0
    failed_at: float = -1.0
    probing: bool = False  # back from a cool-down: one request at a time until one succeeds
    last_error: str = ""
    answered: int = 0
    failures: int = 0

    def room(self, now: float) -> int:
        if now < self.down_until:
            return 0
        return (1 if self.probing else self.limit) - self.in_flight

    def fail(self, exc: BaseException, cooldown_s: float) -> None:
        self.failures += 1
        self.failed_at = time.monotonic()
        self.down_until = self.failed_at + cooldown_s
        self.probing = True
        self.last_error = describe(exc)

    def succeed(self, started: float) -> None:
        self.answered += 1
        if started > self.failed_at:  # a request sent after the last failure came back: the host works
            self.probing = False


@dataclass
class _Health:
    hosts: list[HostState]
    lock: threading.Lock = field(default_factory=threading.Lock)


def describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {text}" if text else type(exc).__name__


def is_host_failure(exc: BaseException) -> bool:
    """True when ``exc`` says the server could not answer (try another), False when the request itself failed."""
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    status = getattr(exc, "status_code", None)
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    try:
        import openai

        if isinstance(exc, openai.APIConnectionError):  # includes timeouts
            return True
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
    except ImportError:  # pragma: no cover
        pass
    # 404: the model is missing there; 401/403: that host refuses the key; 408/429: overloaded
    return isinstance(status, int) and (status >= 500 or status in (401, 403, 404, 408, 429))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status a server answered with, for every client's error type (None for a transport failure)."""
    status = getattr(exc, "status_code", None)
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    return status if isinstance(status, int) and status > 0 else None


def is_transient(exc: BaseException) -> bool:
    """A failure worth trying again on the same server a little later: no connection, a reset, a timeout, a 5xx
    (e.g. Ollama's "model runner has unexpectedly stopped"), 408 or 429."""
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    try:
        import openai

        if isinstance(exc, openai.APIConnectionError):  # includes timeouts
            return True
    except ImportError:  # pragma: no cover
        pass
    status = status_of(exc)
    return status is not None and (status >= 500 or status in (408, 429))


def is_request_refused(exc: BaseException) -> bool:
    """The server answered this one request with a 4xx of its own (a prompt over its context, a bad field): the
    item's failure, not the server's, and not an answer of the model's either."""
    status = status_of(exc)
    return status is not None and 400 <= status < 500 and not is_host_failure(exc)


RETRY_DELAYS_S = (1.0, 3.0)  # bounded: two more tries, after these pauses (with a little jitter)


def call_with_retries(fn: Any, url: str, model: str, delays: Sequence[float] = RETRY_DELAYS_S) -> Any:
    """``fn()``, tried again after each of ``delays`` while it fails transiently (:func:`is_transient`); the last
    failure is raised. While a call runs longer than :data:`SLOW_AFTER_S`, its elapsed time is logged."""
    import random

    from luthitune import cancel

    for attempt in range(len(delays) + 1):
        try:
            with in_flight(url, model):
                return fn()
        except Exception as exc:
            if attempt == len(delays) or not is_transient(exc):
                raise
            pause = delays[attempt] * (1 + 0.25 * random.random())
            log.warning(
                "%s for model %r failed (%s); trying again in %.0f s (%d of %d).",
                url,
                model,
                describe(exc),
                pause,
                attempt + 1,
                len(delays),
            )
            cancel.check()
            time.sleep(pause)
            cancel.check()
    raise AssertionError("unreachable")  # pragma: no cover


# -- calls in flight: a slow server shows how long it has been working --

SLOW_AFTER_S = 15.0  # a call running longer than this is reported, and again every REPORT_EVERY_S
REPORT_EVERY_S = 15.0


@dataclass
class _Calls:
    running: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reporter: threading.Thread | None = None
    reported: dict[str, float] = field(default_factory=dict)


_CALLS = _Calls()


def _report_slow() -> None:
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        with _CALLS.lock:
            by_url: dict[str, list[tuple[str, float]]] = {}
            for url, model, t0 in _CALLS.running.values():
                by_url.setdefault(url, []).append((model, now - t0))
        for url, calls in by_url.items():
            oldest = max(age for _, age in calls)
            if oldest < SLOW_AFTER_S or now - _CALLS.reported.get(url, 0.0) < REPORT_EVERY_S:
                continue
            _CALLS.reported[url] = now
            many = f"{len(calls)} requests" if len(calls) > 1 else "a request"
            log.info("Waiting for %s (model %r): %s in flight, the oldest for %.0f s.", url, calls[0][0], many, oldest)


class in_flight:  # lower-case: used as a context manager, like a function
    """Registers one call to ``url`` while it runs, for the slow-call report."""

    def __init__(self, url: str, model: str):
        self.key = (url, model)

    def __enter__(self) -> in_flight:
        with _CALLS.lock:
            _CALLS.running[id(self)] = (*self.key, time.monotonic())
            if _CALLS.reporter is None:
                _CALLS.reporter = threading.Thread(target=_report_slow, name="luthitune-slow-calls", daemon=True)
                _CALLS.reporter.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with _CALLS.lock:
            _CALLS.running.pop(id(self), None)


class HostPool(CompletedBatch, BaseChatModel):
    """One chat model over several servers of the same backend (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Literal["ollama", "openai"]
    model_name: str
    clients: list[Any] = Field(exclude=True)  # one real client per host, in the order of ``urls``
    urls: list[str]
    limits: list[int]
    cooldown_s: float = 30.0
    # Overrides applied to every host's client (nodes and the benchmark set them with ``model_copy``).
    temperature: float | None = None
    seed: int | None = None
    health: Any = Field(default=None, exclude=True)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if len({len(self.clients), len(self.urls), len(self.limits)}) != 1 or not self.urls:
            raise ValueError("HostPool needs one client, URL and limit per host")
        if self.health is None:
            self.health = _Health([HostState(u, n) for u, n in zip(self.urls, self.limits, strict=True)])

    @property
    def _llm_type(self) -> str:
        return f"luthitune-hosts-{self.backend}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_name": self.model_name, "urls": self.urls}

    @property
    def hosts(self) -> list[HostState]:
        return self.health.hosts

    # -- calls --

    def _clients_now(self) -> list[Any]:
        update = {k: v for k, v in (("temperature", self.temperature), ("seed", self.seed)) if v is not None}
        return [c.model_copy(update=update) if update else c for c in self.clients]

    def _call_kwargs(self, client: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        schema, name = kwargs.pop("json_schema", None), kwargs.pop("schema_name", "answer")
        if schema is None:
            return kwargs
        if self.backend == "openai":
            from luthitune.backends.openai import structured_kwargs

            return {**kwargs, **structured_kwargs(client, schema, name)}
        return {**kwargs, "format": schema}  # Ollama's JSON-schema format

    def _pick(self, now: float) -> int | None:
        """The host for the next item: one back from its cool-down first (its single probe tells whether it works
        again), else the one with the most free room relative to its limit."""
        best, best_free = None, 0.0
        for k, h in enumerate(self.hosts):
            room = h.room(now)
            if room > 0 and h.probing:
                return k
            if room > 0 and (free := room / h.limit) > best_free:
                best, best_free = k, free
        return best

    def _all_down(self) -> BackendUnavailable:
        what = "; ".join(f"{h.url} ({h.last_error or 'no answer'})" for h in self.hosts)
        serve = "`ollama serve` on each" if self.backend == "ollama" else "each OpenAI-compatible server"
        return BackendUnavailable(
            f"None of the {len(self.hosts)} {self.backend} hosts can answer for model {self.model_name!r}: {what}.\n"
            f"Start {serve}, or fix `{self.backend}.hosts` in luthitune.yaml; `luthitune doctor` checks every host. "
            "Everything finished so far is saved: `luthitune resume RUN` continues from there."
        )

    def batch_as_completed(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, AIMessage)`` as answers arrive, each input exactly once, spread over the hosts."""
        if not inputs:
            return
        first = config[0] if isinstance(config, list | tuple) and config else config
        cap = sum(self.limits)
        if isinstance(first, dict) and first.get("max_concurrency"):
            cap = min(cap, int(first["max_concurrency"]))
        messages = [self._convert_input(x).to_messages() for x in inputs]
        clients = self._clients_now()
        call_kwargs = [self._call_kwargs(c, kwargs) for c in clients]
        pending: deque[int] = deque(range(len(inputs)))
        running: dict[Future, tuple[int, int, float]] = {}
        pool = ContextThreadPoolExecutor(max_workers=cap, thread_name_prefix="luthitune-host")
        health = self.health
        try:
            while pending or running:
                with health.lock:
                    now = time.monotonic()
                    while pending and len(running) < cap and (k := self._pick(now)) is not None:
                        i = pending.popleft()
                        self.hosts[k].in_flight += 1
                        fut = pool.submit(clients[k].invoke, messages[i], **call_kwargs[k])
                        running[fut] = (i, k, now)
                    if not running:  # work left and no host to send it to: every host is out
                        raise self._all_down()
                    back = [h.down_until - now for h in self.hosts if h.down_until > now]
                done, _ = wait(list(running), timeout=min(back) if back else None, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, k, started = running.pop(fut)
                    host = self.hosts[k]
                    exc = fut.exception()
                    with health.lock:
                        host.in_flight -= 1
                        if exc is not None and is_host_failure(exc):
                            host.fail(exc, self.cooldown_s)
                            pending.appendleft(i)  # redone on another host; never yielded as a failure
                            log.warning(
                                "Host %s failed (%s); left out for %g s, its work goes to the other hosts.",
                                host.url,
                                host.last_error,
                                self.cooldown_s,
                            )
                            continue
                        if exc is None:
                            host.succeed(started)
                    if exc is not None:
                        if not return_exceptions:
                            raise exc
                        yield i, exc
                        continue
                    msg = fut.result()
                    meta = {**msg.response_metadata, HOST_KEY: host.url}
                    yield i, msg.model_copy(update={"response_metadata": meta})
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if stop is not None:
            kwargs["stop"] = stop
        [(_, msg)] = list(self.batch_as_completed([messages], **kwargs))
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        """JSON-schema constrained answers on whichever host takes the item, validated by the shared parser."""
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError("The host pool takes a pydantic model class as the schema")
        from luthitune.backends.structured import json_parser

        bound = self.bind(json_schema=schema.model_json_schema(), schema_name=schema.__name__)
        return bound | json_parser(schema, include_raw)


def make_host_pool(config: Config, model: str | None = None) -> HostPool:
    """The pool over ``config.hosts()`` for the ollama or openai backend; each host's client does no retries of
    its own (the pool retries on another host)."""
    hosts = config.hosts()
    model = model or config.chat_model
    if config.backend == "ollama":
        from luthitune.backends.ollama import make_chat_ollama

        clients = [make_chat_ollama(config, model, base_url=h.url, retries=False) for h in hosts]
        cooldown = config.ollama.cooldown_s
    else:
        from luthitune.backends.openai import make_chat_openai

        clients = [make_chat_openai(config, model, base_url=h.url, max_retries=0) for h in hosts]
        cooldown = config.openai.cooldown_s
    return HostPool(
        backend=config.backend,  # type: ignore[arg-type]
        model_name=model,
        clients=clients,
        urls=[h.url for h in hosts],
        limits=[h.concurrency for h in hosts],
        cooldown_s=cooldown,
    )


# -- which server answered --


def _unwrap(llm: Any) -> Any:
    while isinstance(llm, RunnableBinding):
        llm = llm.bound
    return llm


def server_url(llm: Any) -> str | None:
    """The one server a plain HTTP client talks to (None for the local backend or a pool)."""
    llm = _unwrap(llm)
    url = getattr(llm, "openai_api_base", None) or getattr(llm, "base_url", None)
    return str(url) if url else None


def message_host(msg: Any, llm: Any = None) -> str | None:
    """The server that produced ``msg``: the pool's tag, else the single server ``llm`` talks to."""
    if isinstance(msg, AIMessage) and msg.response_metadata.get(HOST_KEY):
        return str(msg.response_metadata[HOST_KEY])
    return server_url(llm) if llm is not None else None


def translate_backend_error(exc: BaseException, llm: Any) -> BaseException:
    """A transport failure of a single-server client as one :class:`BackendUnavailable` naming the server, the
    model and what to run; any other exception unchanged."""
    if isinstance(exc, BackendUnavailable):
        return exc
    llm = _unwrap(llm)
    url = server_url(llm)
    if url is None:
        return exc
    model = str(getattr(llm, "model_name", None) or getattr(llm, "model", "?"))
    if hasattr(llm, "openai_api_base"):
        from luthitune.backends.openai import translate_error

        return translate_error(
            exc,
            url,
            model,
            getattr(llm, "api_key_env", "OPENAI_API_KEY"),
            timeout_s=getattr(llm, "request_timeout", None),
        )
    from luthitune.backends.ollama import translate_error as ollama_error

    return ollama_error(exc, url, model, timeout_s=(getattr(llm, "client_kwargs", None) or {}).get("timeout"))
