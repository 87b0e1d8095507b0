"""A mock of the Anthropic Messages API (``POST /v1/messages``), checked against the spec.

It behaves like a model that follows the system prompt: it answers the forced tool call with
as many scenes as the prompt asks for. ``stop_reason``, ``scene_count`` and ``malformed`` make
it misbehave.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.mocks import spec
from tests.mocks.base import MockProvider, Reply, request_id

PATH = "/v1/messages"


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error in the API's shape (``ErrorResponse``)."""
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": None}
    return Reply(status, body, {"request-id": request_id(), **(headers or {})})


def rate_limited(*, retry_after: str | None = None, retry_after_ms: str | None = None) -> Reply:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    return error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.",
                 headers)  # fmt: skip


def overloaded() -> Reply:
    return error(529, "overloaded_error", "Overloaded")


def server_error() -> Reply:
    return error(500, "api_error", "Internal server error")


def unauthorized() -> Reply:
    return error(401, "authentication_error", "invalid x-api-key")


def invalid_request(message: str = "messages: field required") -> Reply:
    return error(400, "invalid_request_error", message)


class AnthropicMock(MockProvider):
    def __init__(self, *, key: str = "sk-ant-test", latency: float = 0.0) -> None:
        super().__init__(key=key, latency=latency)
        self.stop_reason: str = "tool_use"
        self.scene_count: int | None = None
        #: How many of the next answers are malformed (a script with no scenes).
        self.malformed = 0
        self.request_checker = spec.request_validator("anthropic", PATH, "post")
        self.response_checker = spec.response_validator("anthropic", PATH, "post", "200")
        self.app = Starlette(routes=[Route(PATH, self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        return await self.paid_json_call(
            request, "messages", refuse=self.refuse, invalid=invalid_request, answer=self.answer,
            headers=lambda message: {"request-id": message["id"]},
        )  # fmt: skip

    def refuse(self, request: Request) -> Reply | None:
        # anthropic 2.x sends the key as a Bearer token; 0.x and curl use x-api-key.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.key not in (request.headers.get("x-api-key"), bearer):
            return unauthorized()
        if not request.headers.get("anthropic-version"):
            self.reject("anthropic-version header missing")
            return invalid_request("anthropic-version header is required")
        return None

    def briefs(self, body: dict[str, Any], system: str) -> dict[str, Any]:
        """The feed's ``emit_briefs`` answer: as many briefs as the prompt asks for, each a
        liked product told anew."""
        found = re.search(r"exactly (\d+) new briefs", system)
        count = int(found.group(1)) if found else 1
        said = body["messages"][0].get("content")
        taste = re.search(r"<taste>(.*)</taste>", said if isinstance(said, str) else "")
        liked = json.loads(taste.group(1))["liked"] if taste else []
        names = [b.get("product_name", "Product") for b in liked] or ["Product"]
        return {
            "briefs": [
                {
                    "product_name": names[i % len(names)], "style": "bold",
                    "cta_text": "Try it", "prompt": f"idea {i + 1} for {names[i % len(names)]}",
                }
                for i in range(count)
            ]
        }  # fmt: skip

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        system = body.get("system") if isinstance(body.get("system"), str) else ""
        found = re.search(r"exactly (\d+) scenes", system or "")
        count = (
            self.scene_count
            if self.scene_count is not None
            else (int(found.group(1)) if found else 3)
        )
        if self.malformed > 0:
            self.malformed -= 1
            count = 0
        product = "the product"
        for message in body["messages"]:
            said = message.get("content")
            found_brief = re.search(r"<brief>(.*)</brief>", said if isinstance(said, str) else "")
            if found_brief:
                product = json.loads(found_brief.group(1)).get("product_name", product)
        scenes = [
            {
                "narration": f"Scene {i + 1}: {product} makes the day brighter.",
                "visual_prompt": f"cinematic shot {i + 1} of {product} on a sunny kitchen table",
            }
            for i in range(count)
        ]
        tool = (body.get("tool_choice") or {}).get("name", "emit_script")
        content: list[dict[str, Any]]
        answer: dict[str, Any] = {"title": f"{product} in {count} scenes", "scenes": scenes}
        if tool == "emit_briefs":
            answer = self.briefs(body, system or "")
        if self.stop_reason == "tool_use":
            content = [
                {
                    "type": "tool_use",
                    "id": "toolu_" + request_id("")[:20],
                    "name": tool,
                    "input": answer,
                    "caller": {"type": "direct"},
                }
            ]
        else:
            content = [{"type": "text", "text": "I can't help with that.", "citations": None}]
        return {
            "id": "msg_" + request_id("")[:24],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
            "usage": {
                "input_tokens": len(json.dumps(body)) // 4,
                "output_tokens": 40 * count,
                "cache_creation": None,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "inference_geo": None,
                "server_tool_use": None,
                "service_tier": "standard",
            },
        }
