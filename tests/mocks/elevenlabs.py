"""A mock of ElevenLabs text-to-speech with timestamps, checked against the spec.

The audio is a real MP3 (a tone standing in for speech) and the alignment spreads the text's
characters evenly over it, as the real endpoint's ``alignment`` does. Every track made is kept
in the account's history (``GET /v1/history``, newest first, filtered by voice, model and
date; ``GET /v1/history/{id}/audio``), as the real API keeps it unless logging is off
(``logging = False`` here).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.mocks import media, spec
from tests.mocks.base import MockProvider, Reply, request_id

PATH = "/v1/text-to-speech/{voice_id}/with-timestamps"
HISTORY = "/v1/history"


def detail(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error with ``detail`` as an object (most errors)."""
    return Reply(status, {"detail": {"status": code, "message": message}}, headers or {})


def too_many_concurrent() -> Reply:
    return detail(
        429,
        "too_many_concurrent_requests",
        "Too many concurrent requests for your subscription. Please upgrade or wait.",
    )


def system_busy(retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after else {}
    return detail(429, "system_busy", "The system is experiencing heavy traffic.", headers)


def invalid_key() -> Reply:
    return detail(401, "invalid_api_key", "Invalid API key")


def quota_exceeded() -> Reply:
    return detail(401, "quota_exceeded", "This request exceeds your quota.")


def validation_error(field: str = "text", message: str = "Field required") -> Reply:
    """A 422 with ``detail`` as a list (the spec's HTTPValidationError)."""
    body = {"detail": [{"loc": ["body", field], "msg": message, "type": "missing"}]}
    return Reply(422, body)


def server_error() -> Reply:
    return Reply(500, {"detail": {"status": "internal_error", "message": "Internal error"}})


class ElevenLabsMock(MockProvider):
    def __init__(self, *, key: str = "el-test", latency: float = 0.0) -> None:
        super().__init__(key=key, latency=latency)
        self.request_checker = spec.request_validator("elevenlabs", PATH, "post")
        self.response_checker = spec.response_validator("elevenlabs", PATH, "post", "200")
        body_schema = spec.load("elevenlabs")["components"]["schemas"][
            "Body_text_to_speech_full_with_timestamps"
        ]
        self.known_fields = set(body_schema["properties"])
        format_param = spec.parameter("elevenlabs", PATH, "post", "output_format")
        self.output_formats = set(format_param["schema"]["enum"])
        self.voices: list[str] = []
        self.history_checker = spec.response_validator("elevenlabs", HISTORY, "get", "200")
        #: The account's history, oldest first; nothing is kept while ``logging`` is off.
        self.history: list[dict[str, Any]] = []
        self.logging = True
        self.app = Starlette(
            routes=[
                Route(
                    "/v1/text-to-speech/{voice_id}/with-timestamps",
                    self.speak,
                    methods=["POST"],
                ),
                Route(HISTORY, self.list_history, methods=["GET"]),
                Route("/v1/history/{history_item_id}/audio", self.audio, methods=["GET"]),
            ]
        )

    async def speak(self, request: Request) -> Response:
        arrived = time.monotonic()
        with self.tracking("tts"):
            key = request.headers.get("xi-api-key")
            if key is None:
                return detail(401, "needs_authorization", "Neither authorization header nor "
                              "xi-api-key received").response()  # fmt: skip
            if key != self.key:
                return invalid_key().response()
            output_format = request.query_params.get("output_format", "mp3_44100_128")
            if output_format not in self.output_formats:
                self.reject(f"output_format {output_format} is not in the spec")
                return validation_error("output_format", "Invalid output format").response()
            try:
                body: Any = await request.json()
            except ValueError:
                self.reject("body is not JSON")
                return validation_error().response()
            self.bodies.append(body)
            self.voices.append(request.path_params["voice_id"])
            problem = spec.errors(self.request_checker, body)
            # The real API ignores unknown fields; a typo there would silently do nothing, so
            # the mock refuses them.
            unknown = set(body) - self.known_fields if isinstance(body, dict) else set()
            if problem is None and unknown:
                problem = f"unknown fields {sorted(unknown)}"
            if problem is not None:
                self.reject(problem)
                return validation_error(message=problem).response()
            fault = self.take_fault()
            if fault is not None:
                await self.delay(arrived)
                return fault
            answer = self.answer(body["text"])
            self.paid += 1
            problem = spec.errors(self.response_checker, answer)
            if problem is not None:
                self.reject(f"mock response breaks the spec: {problem}")
            made = request_id("")[:20]
            if self.logging:
                self.history.append(self.item(made, body, answer, output_format))
            response = JSONResponse(answer, headers={"request-id": made})
            await self.delay(arrived)
            return response

    def item(
        self, made: str, body: dict[str, Any], answer: dict[str, Any], output_format: str
    ) -> dict[str, Any]:
        """The history item of the track request ``made`` made."""
        return {
            "history_item_id": request_id("hist_")[:24],
            "request_id": made,
            "voice_id": self.voices[-1],
            "model_id": body.get("model_id", "eleven_multilingual_v2"),
            "text": body["text"],
            "date_unix": int(time.time()),
            "character_count_change_from": 0,
            "character_count_change_to": len(body["text"]),
            "content_type": "audio/mpeg",
            "state": "created",
            "source": "TTS",
            "output_format": output_format,
            "alignments": {
                "alignment": answer["alignment"],
                "normalized_alignment": answer["normalized_alignment"],
            },
        }

    async def list_history(self, request: Request) -> Response:
        with self.tracking("history"):
            if request.headers.get("xi-api-key") != self.key:
                return invalid_key().response()
            query = request.query_params
            after = int(query.get("date_after_unix", "0"))
            found = [
                item for item in reversed(self.history)
                if item["date_unix"] >= after
                and query.get("voice_id") in (None, item["voice_id"])
                and query.get("model_id") in (None, item["model_id"])
            ]  # fmt: skip
            start = query.get("start_after_history_item_id")
            if start is not None:
                ids = [item["history_item_id"] for item in found]
                found = found[ids.index(start) + 1 :] if start in ids else []
            size = int(query.get("page_size", "100"))
            page = found[:size]
            body = {
                "history": page,
                "has_more": len(found) > size,
                "last_history_item_id": page[-1]["history_item_id"] if page else None,
            }
            problem = spec.errors(self.history_checker, body)
            if problem is not None:
                self.reject(f"mock history breaks the spec: {problem}")
            return JSONResponse(body)

    async def audio(self, request: Request) -> Response:
        with self.tracking("history_audio"):
            if request.headers.get("xi-api-key") != self.key:
                return invalid_key().response()
            item_id = request.path_params["history_item_id"]
            if not any(item["history_item_id"] == item_id for item in self.history):
                return detail(404, "history_item_not_found", "no such history item").response()
            return Response(media.speech_mp3(), media_type="audio/mpeg")

    def answer(self, text: str) -> dict[str, Any]:
        step = media.SPEECH_SECONDS * 0.95 / max(1, len(text))
        alignment = {
            "characters": list(text),
            "character_start_times_seconds": [round(i * step, 3) for i in range(len(text))],
            "character_end_times_seconds": [round((i + 1) * step, 3) for i in range(len(text))],
        }
        return {
            "audio_base64": base64.b64encode(media.speech_mp3()).decode(),
            "alignment": alignment,
            "normalized_alignment": alignment,
        }
