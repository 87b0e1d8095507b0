"""A mock of OpenAI's embeddings API (``POST /v1/embeddings``), checked against the spec
excerpt in ``tests/specs/openai.json``.

Its vectors are the offline embedder's (``videoq.providers.embeddings.offline_vector``) cut or
padded to the ``dimensions`` asked for, so texts that share words are near, as a real model's
would be; ``dimensions_answered`` makes it answer another size.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.mocks import spec
from tests.mocks.base import MockProvider, Reply
from videoq.providers.embeddings import DIMENSIONS, offline_vector

PATH = "/v1/embeddings"


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error in the API's shape (``{"error": {"message", "type", "param", "code"}}``)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return Reply(status, body, headers or {})


def rate_limited(retry_after: str = "0") -> Reply:
    return error(429, "requests", "Rate limit reached", {"retry-after": retry_after})


def server_error() -> Reply:
    return error(500, "server_error", "The server had an error while processing your request.")


def invalid_request(message: str) -> Reply:
    return error(400, "invalid_request_error", message)


class OpenAIMock(MockProvider):
    def __init__(self, *, key: str = "sk-test-openai", latency: float = 0.0) -> None:
        super().__init__(key=key, latency=latency)
        #: Answer vectors of this size instead of the one asked for (a misconfigured model).
        self.dimensions_answered: int | None = None
        self.request_checker = spec.request_validator("openai", "/embeddings", "post")
        self.response_checker = spec.response_validator("openai", "/embeddings", "post", "200")
        self.app = Starlette(routes=[Route(PATH, self.embeddings, methods=["POST"])])

    async def embeddings(self, request: Request) -> Response:
        return await self.paid_json_call(
            request, "embeddings", refuse=self.refuse, invalid=invalid_request, answer=self.answer
        )

    def refuse(self, request: Request) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return error(401, "invalid_request_error", "Incorrect API key provided")
        return None

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = self.dimensions_answered or body.get("dimensions") or DIMENSIONS
        data = []
        for index, text in enumerate(texts):
            vector = (offline_vector(str(text)) + [0.0] * size)[:size]
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            data.append(
                {"object": "embedding", "index": index, "embedding": [x / norm for x in vector]}
            )
        tokens = sum(len(str(text).split()) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
