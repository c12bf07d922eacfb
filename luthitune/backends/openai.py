"""The ``openai`` backend: any OpenAI-compatible server through ``langchain-openai``.

vLLM, llama.cpp's server, LM Studio and TGI's Messages API all speak ``/v1/chat/completions``. Structured output
uses the server's JSON-schema support (``response_format: {type: json_schema}``; vLLM turns it into guided
decoding); :mod:`luthitune.backends.structured` validates the answer and retries, as for every backend.

The API key is read from the environment variable named by ``openai.api_key_env`` when the client is made. It
lives only in the client (as a ``SecretStr``, shown as ``**********``): never in luthitune.yaml, the run's stored
settings, an error message or a log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.runnables import Runnable
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import BaseModel, SecretStr

from luthitune.config import Config
from luthitune.errors import BackendUnavailable

# Sent when the variable is unset: servers started without a key (vLLM without --api-key, llama.cpp, LM Studio)
# accept any value, and the client library refuses to start without one.
NO_KEY = "no-key-set"


def api_key(config: Config) -> SecretStr:
    return SecretStr(os.environ.get(config.openai.api_key_env) or NO_KEY)


class OpenAICompatibleChat(BaseChatOpenAI):
    """langchain-openai's chat model for compatible servers, whose structured output keeps the raw text.

    Built on ``BaseChatOpenAI`` (as langchain's own DeepSeek and xAI models are) rather than ``ChatOpenAI``, which
    renames ``max_tokens`` to ``max_completion_tokens`` and routes some model names to the Responses API: the
    Chat Completions fields are what every compatible server implements.

    ``ChatOpenAI.with_structured_output`` sends ``response_format`` through the client's ``parse()``, which raises
    on an answer cut at ``max_tokens`` and loses its text. Here the JSON schema travels in the request body
    (``extra_body``), the reply comes back as plain text, and :func:`~luthitune.backends.structured.json_parser`
    validates it like every other backend's, so a failed answer keeps its raw text for quarantine.
    """

    api_key_env: str = "OPENAI_API_KEY"  # named in error messages; the key itself is in ``openai_api_key``

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        """One request (the client retries transient failures itself, ``max_retries``), reported while it runs
        long."""
        from luthitune.backends.hosts import in_flight

        with in_flight(str(self.openai_api_base), str(self.model_name)):
            return super()._generate(messages, stop, run_manager, **kwargs)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise TypeError("The openai backend takes a pydantic model class as the schema")
        from luthitune.backends.structured import json_parser

        return self.bind(**structured_kwargs(self, schema.model_json_schema(), schema.__name__)) | json_parser(
            schema, include_raw
        )


def structured_kwargs(client: BaseChatOpenAI, json_schema: dict[str, Any], name: str) -> dict[str, Any]:
    """Call arguments that make the server answer with JSON matching ``json_schema``."""
    from luthitune.backends.local import schema_token_budget

    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}
    return {
        "extra_body": {**(client.extra_body or {}), "response_format": response_format},
        # Room to finish the object: the grammar closes every string at its maxLength (as on the local backend).
        "max_tokens": max(client.max_tokens or 0, schema_token_budget(json_schema)),
    }


def make_chat_openai(
    config: Config, model: str | None = None, *, base_url: str | None = None, max_retries: int = 2
) -> OpenAICompatibleChat:
    """The client for one server. ``max_retries``: the client's own retries of a failed request (the host pool
    passes 0: it retries on another host instead)."""
    o, s = config.openai, config.sampling
    return OpenAICompatibleChat(
        model=model or config.chat_model,
        base_url=base_url or o.base_url,
        api_key=api_key(config),
        api_key_env=o.api_key_env,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_new_tokens,
        seed=s.seed,
        timeout=o.timeout_s,
        max_retries=max_retries,
        extra_body=dict(o.extra_body) or None,
        use_responses_api=False,  # /v1/chat/completions: what every compatible server implements
    )


def unreachable(url: str, model: str, detail: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"No OpenAI-compatible server is reachable at {url} (model {model!r}): {detail}.\n"
        f"Start it (for example `vllm serve {model} --port 8000`), or point `openai.base_url` in luthitune.yaml at "
        "the right server (it ends in /v1). `luthitune doctor` checks it. To run without a server, set "
        "`backend: local`."
    )


def bad_key(url: str, env: str, status: int) -> BackendUnavailable:
    where = f"the environment variable {env}"
    return BackendUnavailable(
        f"The server at {url} refused the request ({status}): it wants an API key. Put the key in {where} "
        f"(export {env}=...), or name another variable in `openai.api_key_env`. The key is never read from "
        "luthitune.yaml."
    )


def missing_model(url: str, model: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"The server at {url} does not serve the model {model!r} (404). `curl {url}/models` lists what it serves: "
        "set `chat_model` in luthitune.yaml to one of them (vLLM: the name given to `vllm serve` or "
        "--served-model-name), and check that `openai.base_url` ends in /v1."
    )


def timed_out(url: str, model: str, timeout_s: Any) -> BackendUnavailable:
    within = f" within {timeout_s:g} s" if isinstance(timeout_s, int | float) else ""
    return BackendUnavailable(
        f"The server at {url} did not answer{within} for model {model!r} (it was reached, but the answer took too "
        "long, after retries).\nRaise `openai.timeout_s` in luthitune.yaml for long answers, or check the server's "
        "load. Everything finished so far is saved: `luthitune resume RUN` redoes the step."
    )


def server_failed(url: str, model: str, status: int, detail: str) -> BackendUnavailable:
    busy = " (too many requests: lower `concurrency`, or raise the server's limit)" if status == 429 else ""
    return BackendUnavailable(
        f"The server at {url} failed for model {model!r}: it answered {status} ({detail}){busy}, after retries. "
        "This is the server's failure, not the model's answer: nothing was quarantined.\nCheck the server's log. "
        "Everything finished so far is saved: `luthitune resume RUN` redoes the step."
    )


def translate_error(
    exc: BaseException, url: str, model: str, env: str = "OPENAI_API_KEY", *, timeout_s: Any = None
) -> BaseException:
    """Map transport and server failures to a user-facing :class:`BackendUnavailable`; return others unchanged.

    A 400 (a request the server rejects, e.g. a prompt over its context) is the item's failure, not the server's.
    """
    import openai

    if isinstance(exc, BackendUnavailable):
        return exc
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | TimeoutError):
        return timed_out(url, model, timeout_s)
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | ConnectionError):
        return unreachable(url, model, f"connection failed ({type(exc).__name__})")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            return bad_key(url, env, status)
        if status == 404:
            return missing_model(url, model)
        if status in (408, 429) or status >= 500:
            return server_failed(url, model, status, _first_line(exc.message))
    return exc


def _first_line(text: str) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line[:200]


@dataclass
class OpenAIStatus:
    url: str
    reachable: bool
    models: list[str] = field(default_factory=list)
    model_present: bool = False
    key_set: bool = False
    error: str | None = None


def check(config: Config, model: str | None = None, *, url: str | None = None, timeout_s: float = 3.0) -> OpenAIStatus:
    """Ask the server which models it serves (``GET /models``), within ``timeout_s``."""
    url, model = url or config.openai.base_url, model or config.chat_model
    env = config.openai.api_key_env
    status = OpenAIStatus(url=url, reachable=False, key_set=bool(os.environ.get(env)))
    headers = {"Authorization": f"Bearer {api_key(config).get_secret_value()}"}
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as client:
            resp = client.get("/models")
        if resp.status_code in (401, 403):
            status.reachable = True
            status.error = str(bad_key(url, env, resp.status_code))
            return status
        resp.raise_for_status()
        data = resp.json().get("data", [])
    except (httpx.HTTPError, ConnectionError, ValueError, AttributeError) as exc:
        if isinstance(exc, httpx.HTTPStatusError):
            status.error = (
                f"{url}/models answered {exc.response.status_code}: is this an OpenAI-compatible server, "
                "and does `openai.base_url` end in /v1?"
            )
        elif isinstance(exc, ValueError | AttributeError):
            status.error = f"{url} answered, but not like an OpenAI-compatible server ({type(exc).__name__})"
        else:
            status.error = str(translate_error(exc, url, model, env))
        return status
    status.reachable = True
    status.models = sorted(str(m.get("id", "")) for m in data if isinstance(m, dict))
    status.model_present = model in status.models
    if not status.model_present:
        status.error = str(missing_model(url, model))
    return status
