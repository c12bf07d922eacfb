"""Structured answers with bounded, informed retries — the same path for every backend.

The backend constrains the shape (Ollama's JSON-schema ``format``; xgrammar on the local backend);
pydantic validates the content. When validation fails, the model sees its own answer and the
validation error and tries again, up to ``retries`` more times. After that the caller gets a
:class:`StructuredOutputError` carrying the raw text, to quarantine — never a made-up row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableLambda, RunnableSequence
from pydantic import BaseModel

from luthitune.cancel import Cancelled
from luthitune.errors import BackendUnavailable, CheckFailed, StructuredOutputError

T = TypeVar("T", bound=BaseModel)

RETRY_TEMPLATE = (
    "Your previous answer was not valid: {error}\n"
    "Answer again with a single JSON object that matches the requested fields exactly."
)
CHECK_TEMPLATE = (
    "Your previous answer did not pass these checks: {error}\n"
    "Answer again in your own words, so that every field says something real, as a single JSON object with the "
    "requested fields."
)
TEXT_CHECK_TEMPLATE = "Your previous answer did not pass these checks: {error}\nAnswer again, in your own words."
# check(index, answer) -> reasons it fails (empty: it passes); on_attempt(index, attempt, raw text, reasons)
Check = Callable[[int, Any], list[str]]
OnAttempt = Callable[[int, int, str, list[str]], None]


class CompletedBatch:
    """``batch()`` for a chat model whose ``batch_as_completed`` does the real work (one continuous batch locally,
    requests spread over hosts): the same results, in input order."""

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any):
        out: list[Any] = [None] * len(inputs)
        for i, res in self.batch_as_completed(inputs, config, return_exceptions=return_exceptions, **kwargs):
            out[i] = res
        return out


def json_parser(schema: type[BaseModel], include_raw: bool) -> RunnableLambda:
    """Parse an AI message's JSON text into ``schema``; with ``include_raw``, LangChain's
    ``{raw, parsed, parsing_error}`` shape, so callers treat every backend alike."""

    def parse(msg: AIMessage) -> Any:
        return schema.model_validate_json(str(msg.content))

    def parse_with_raw(msg: AIMessage) -> dict[str, Any]:
        try:
            return {"raw": msg, "parsed": parse(msg), "parsing_error": None}
        except Exception as exc:
            return {"raw": msg, "parsed": None, "parsing_error": exc}

    return RunnableLambda(parse_with_raw if include_raw else parse)


def _short_error(exc: BaseException) -> str:
    """One line: a pydantic error as ``field: message (got 'value')`` per field, anything else as its text."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors(include_url=False):
            where = ".".join(str(x) for x in e.get("loc", ())) or "answer"
            got = e.get("input")
            shown = f" (got {str(got)[:60]!r})" if isinstance(got, str | int | float) else ""
            parts.append(f"{where}: {e.get('msg', 'invalid')}{shown}")
        text = "; ".join(parts)
    else:
        text = str(exc).strip().replace("\n", " ")
    return text[:400] + ("…" if len(text) > 400 else "")


def _raise_if_backend_down(exc: BaseException, llm: BaseChatModel) -> None:
    """Raise unless ``exc`` is a request the server refused for this one item (a 4xx of its own).

    Only an answer the model gave may be quarantined: a failing server (no connection, a timeout, a 5xx) becomes
    :class:`BackendUnavailable` naming the server and model, which stops the step like a crash so that ``resume``
    redoes it; any other exception (a bug, a local runtime failure) is raised as it is, for the same reason."""
    from luthitune.backends.hosts import describe, is_host_failure, is_request_refused, translate_backend_error

    found = translate_backend_error(exc, llm)  # ChatOllama and the openai client name their server
    if isinstance(found, BackendUnavailable):
        raise found from (None if found is exc else exc)
    if is_host_failure(exc):
        raise BackendUnavailable(
            f"The model backend failed ({describe(exc)}). This is the server's failure, not the model's answer: "
            "nothing was quarantined. Run `luthitune doctor` to see what is wrong, then `luthitune resume RUN`."
        ) from exc
    if not is_request_refused(exc):
        raise exc


def _split(runnable: Any) -> tuple[Any, Any]:
    """(model step, parsing steps) of a ``with_structured_output(include_raw=True)`` chain."""
    steps = getattr(runnable, "steps", None)
    if not steps or len(steps) < 2:
        return runnable, None
    return steps[0], steps[1] if len(steps) == 2 else RunnableSequence(*steps[1:])


def _text(msg: AIMessage) -> dict[str, Any]:
    """A plain reply in the ``{raw, parsed, parsing_error}`` shape: its text, or an error when it is empty."""
    text = str(msg.content).strip()
    return {"raw": msg, "parsed": text or None, "parsing_error": None if text else ValueError("empty answer")}


def generate_text(llm: BaseChatModel, conversations: Sequence[Sequence[BaseMessage]], **kwargs: Any) -> list:
    """Plain-text replies, one per conversation, with the same bounded, checked retries as structured answers:
    ``check(index, text)`` gives the reasons a reply fails, and a reply that keeps failing is a :class:`CheckFailed`
    carrying its last text."""
    return generate_structured(llm, conversations, None, **kwargs)


def generate_structured(
    llm: BaseChatModel,
    conversations: Sequence[Sequence[BaseMessage]],
    schema: type[T] | None,
    *,
    retries: int = 2,
    max_concurrency: int | None = None,
    attempts: list[int] | None = None,
    on_result: Callable[[int, T | StructuredOutputError], None] | None = None,
    hosts: dict[int, str | None] | None = None,
    check: Check | None = None,
    on_attempt: OnAttempt | None = None,
) -> list[T | StructuredOutputError]:
    """One validated ``schema`` instance (or a typed failure) per conversation, in input order.

    Each attempt runs the items still pending with at most ``max_concurrency`` in flight: concurrent
    requests on Ollama, one continuous batch on the local backend. ``on_result(index, result)`` is called as
    soon as an item is final (valid, or failed after its retries), so callers can store it before the
    others finish. ``attempts``, if given, is extended with the number of attempts each item took. ``hosts``, if
    given, maps each item's index to the server that produced its last answer (set before ``on_result``; None on
    the local backend).

    ``check(index, answer)`` reads a well-formed answer's meaning (:mod:`luthitune.meaning`) and returns the reasons
    it fails: such an answer is asked again like a malformed one, with the reasons shown to the model, and after the
    retries the caller gets a :class:`CheckFailed` with the last answer. ``on_attempt`` is told of every failed
    attempt (index, attempt number from 1, raw text, reasons), so each can be stored.
    """
    from luthitune.backends.hosts import message_host

    if schema is None:  # plain text (generate_text)
        model_step, parse = llm, RunnableLambda(_text)
    else:
        model_step, parse = _split(llm.with_structured_output(schema, include_raw=True, method="json_schema"))
    convs = [list(c) for c in conversations]
    results: list[Any] = [None] * len(convs)
    errors: list[list[str]] = [[] for _ in convs]
    raws: list[str] = [""] * len(convs)
    last: list[tuple[Any, list[str]]] = [(None, [])] * len(convs)  # (parsed answer that failed checks, reasons)
    pending = list(range(len(convs)))
    config = {"max_concurrency": max_concurrency} if max_concurrency else None

    def settle(i: int, out: Any) -> bool:
        """Take item ``i``'s answer: True when it passed, False when it failed (its retry conversation is ready)."""
        if not isinstance(out, BaseException) and parse is not None:
            try:
                out = parse.invoke(out)
            except Exception as exc:
                out = exc
        if isinstance(out, Cancelled):
            raise out  # a cancelled run is not a failed answer: nothing is quarantined, resume redoes it
        if hosts is not None and isinstance(out, dict) and out.get("raw") is not None:
            hosts[i] = message_host(out["raw"], llm)
        if isinstance(out, BaseException):
            _raise_if_backend_down(out, llm)
            err, raw = out, ""
        elif out.get("parsing_error") is None and out.get("parsed") is not None:
            failures = check(i, out["parsed"]) if check else []
            if not failures:
                results[i] = out["parsed"]
                if on_result:
                    on_result(i, results[i])
                return True
            raw_msg = out.get("raw")
            raw = raw_msg.content if isinstance(raw_msg, AIMessage) else str(raw_msg or "")
            err, last[i] = "; ".join(failures), (out["parsed"], failures)
        else:
            err = out.get("parsing_error") or ValueError("empty answer")
            raw_msg = out.get("raw")
            raw = raw_msg.content if isinstance(raw_msg, AIMessage) else str(raw_msg or "")
            last[i] = (None, [f"structured_output: {_short_error(err)}"])
        raws[i] = raw if isinstance(raw, str) else str(raw)
        errors[i].append(err if isinstance(err, str) else _short_error(err))
        if on_attempt:
            on_attempt(i, len(errors[i]), raws[i], last[i][1])
        template = TEXT_CHECK_TEMPLATE if schema is None else RETRY_TEMPLATE if last[i][0] is None else CHECK_TEMPLATE
        convs[i] = [
            *convs[i],
            AIMessage(content=raws[i] or "(no answer)"),
            HumanMessage(content=template.format(error=errors[i][-1])),
        ]
        return False

    if getattr(model_step, "follow_ups", False) and pending:
        # The backend takes each retry into the running batch the moment its answer fails, instead of a new round
        # after the slowest answer of this one.
        stream = model_step.batch_as_completed(convs, config=config, return_exceptions=True)
        still: list[int] = []
        asked: set[int] = set()  # sent a retry, not answered yet
        try:
            reply = None
            while True:
                try:
                    i, out = stream.send(reply)
                except StopIteration:
                    break
                reply = None
                asked.discard(i)
                if not settle(i, out):
                    if len(errors[i]) <= retries:
                        reply = convs[i]
                        asked.add(i)
                    else:
                        still.append(i)
        finally:
            stream.close()
        pending = sorted([*still, *asked])  # failed for good (asked: the batch ended before the retry ran)
    else:
        for _attempt in range(retries + 1):
            if not pending:
                break
            still = []
            batch = [convs[i] for i in pending]
            for j, out in model_step.batch_as_completed(batch, config=config, return_exceptions=True):
                i = pending[j]
                if not settle(i, out):
                    still.append(i)
            pending = sorted(still)
    for i in pending:
        parsed, reasons = last[i]
        name = schema.__name__ if schema is not None else "text"
        results[i] = (
            CheckFailed(name, raws[i], errors[i], reasons, parsed)
            if parsed is not None
            else StructuredOutputError(name, raws[i], errors[i])
        )
        if on_result:
            on_result(i, results[i])
    if attempts is not None:
        attempts.extend(
            len(e) + (0 if isinstance(r, StructuredOutputError) else 1) for e, r in zip(errors, results, strict=True)
        )
    return results


def ask_structured(
    llm: BaseChatModel,
    messages: Sequence[BaseMessage],
    schema: type[T],
    *,
    retries: int = 2,
    check: Check | None = None,
    on_attempt: OnAttempt | None = None,
) -> T:
    """Single structured call; raises :class:`StructuredOutputError` (or :class:`CheckFailed`) after the retries."""
    [result] = generate_structured(llm, [messages], schema, retries=retries, check=check, on_attempt=on_attempt)
    if isinstance(result, StructuredOutputError):
        raise result
    return result


def chat(llm: BaseChatModel, messages: Sequence[BaseMessage]) -> AIMessage:
    """Plain-text reply, with transport errors turned into :class:`BackendUnavailable`."""
    try:
        return llm.invoke(list(messages))
    except Exception as exc:
        _raise_if_backend_down(exc, llm)
        raise
