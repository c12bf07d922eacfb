"""A fake chat model with queued replies, for unit tests only."""

from __future__ import annotations

import json
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from luthitune.backends.structured import json_parser


class FakeChatModel(BaseChatModel):
    """Answers with queued replies in order (str, dict → JSON, or an exception to raise).

    Every call's messages are recorded in ``calls``. An empty queue fails the test loudly.
    """

    replies: list[Any] = Field(default_factory=list)
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "fake"

    def queue(self, *replies: Any) -> FakeChatModel:
        self.replies.extend(replies)
        return self

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        if not self.replies:
            raise AssertionError("FakeChatModel: no reply queued for this call")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        text = json.dumps(reply) if isinstance(reply, (dict, list)) else str(reply)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def batch(self, inputs, config=None, *, return_exceptions=False, **kwargs):
        # Sequential, so queued replies line up with inputs deterministically.
        out = []
        for i in inputs:
            try:
                out.append(self.invoke(i, **kwargs))
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    def with_structured_output(self, schema, *, include_raw: bool = False, **kwargs):
        return self | json_parser(schema, include_raw)
