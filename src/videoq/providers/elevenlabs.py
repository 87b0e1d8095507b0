"""Voice from ElevenLabs text-to-speech, over plain ``httpx``.

One request per script, ``POST /v1/text-to-speech/{voice_id}/with-timestamps``: the whole
narration in one voice (continuous intonation, one request id), and the character alignment
tells where each scene's narration starts, so compositing cuts the picture where the voice
moves on.

Errors come in two shapes, ``{"detail": [{"loc", "msg", "type"}]}`` (422) and
``{"detail": {"status", "message"}}`` (everything else); both are read. Of the two 429s,
``too_many_concurrent_requests`` means *our* plan's concurrency is used up (retry soon, at a
steady pace: one of our own requests is about to finish) and ``system_busy`` means ElevenLabs
is overloaded (back off exponentially).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from videoq.errors import PermanentError, ProviderError, RetryableError
from videoq.ffmpeg import atomic_output, probe
from videoq.providers.http import (
    RetryPolicy,
    call_with_retries,
    classify,
    keepalive_limits,
    transport_error,
)
from videoq.types import Script, VoiceTrack

if TYPE_CHECKING:
    from videoq.providers.limits import Limiter
    from videoq.settings import Settings
    from videoq.types import Brief

#: ``detail.status`` values and the error codes they become.
DETAIL_CODES: dict[str, str] = {
    "too_many_concurrent_requests": "provider_concurrency_limit",
    "concurrent_limit_exceeded": "provider_concurrency_limit",
    "system_busy": "provider_busy",
    "quota_exceeded": "quota_exceeded",
    "invalid_api_key": "provider_auth_failed",
    "needs_authorization": "provider_auth_failed",
    "max_character_limit_exceeded": "text_too_long",
    "voice_not_found": "voice_not_found",
}
#: Audio container by ``output_format`` prefix; raw PCM/µ-law/A-law need a header FFmpeg lacks.
EXTENSIONS = {"mp3": ".mp3", "wav": ".wav", "opus": ".ogg"}


def make_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's ElevenLabs client (``httpx.AsyncClient`` with the key header)."""
    key = settings.elevenlabs_api_key
    if key is None:
        raise ValueError("ELEVENLABS_API_KEY is not set")
    return httpx.AsyncClient(
        base_url=settings.elevenlabs_base_url,
        headers={"xi-api-key": key.get_secret_value()},
        timeout=httpx.Timeout(settings.elevenlabs_timeout_s, connect=10.0),
        limits=keepalive_limits(settings.elevenlabs_concurrency * 2),
        transport=transport,
    )


def join_narration(script: Script) -> tuple[str, list[int]]:
    """The script's narration as one text, and where each scene's part starts in it."""
    parts: list[str] = []
    offsets: list[int] = []
    position = 0
    for scene in script.scenes:
        text = " ".join(scene.narration.split())
        offsets.append(position)
        parts.append(text)
        position += len(text) + 1
    return " ".join(parts), offsets


def scene_starts(alignment: Any, offsets: list[int]) -> tuple[float, ...] | None:
    """Start time of each scene's first character, or None if the alignment does not fit."""
    if not isinstance(alignment, dict):
        return None
    starts = alignment.get("character_start_times_seconds")
    if not isinstance(starts, list) or not offsets or offsets[-1] >= len(starts):
        return None
    try:
        times = tuple(float(starts[i]) for i in offsets)
    except (TypeError, ValueError):
        return None
    return times if list(times) == sorted(times) else None


def error_for(response: httpx.Response) -> ProviderError:
    """Classify a failed response, reading ``detail`` as a list or an object."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    status: str | None = None
    if isinstance(detail, dict):
        status = str(detail.get("status") or detail.get("code") or "") or None
        message = str(detail.get("message") or "")
    elif isinstance(detail, list):
        message = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    else:
        message = str(detail or response.reason_phrase)
    return classify(
        "elevenlabs",
        response.status_code,
        headers=response.headers,
        message=f"{status}: {message}" if status else message,
        code=DETAIL_CODES.get(status or ""),
    )


class ElevenLabsVoiceProvider:
    """A :class:`~videoq.providers.VoiceProvider` on ElevenLabs."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        *,
        limiter: Limiter,
        policy: RetryPolicy,
    ) -> None:
        self._client = client
        self._settings = settings
        self._limiter = limiter
        self._policy = policy

    async def speak(self, script: Script, brief: Brief, out_dir: Path) -> VoiceTrack:
        """``out_dir/voice.<ext>`` with the whole narration, and when each scene starts."""
        output_format = self._settings.elevenlabs_output_format
        extension = EXTENSIONS.get(output_format.split("_", 1)[0])
        if extension is None:
            raise PermanentError(
                f"output format {output_format} has no container FFmpeg can read",
                code="unsupported_output_format",
            )
        text, offsets = join_narration(script)
        voice_id = brief.voice or self._settings.elevenlabs_voice_id

        async def once() -> tuple[dict[str, Any], httpx.Headers]:
            async with self._limiter.slot():
                return await self._request(voice_id, text, output_format)

        data, headers = await call_with_retries(
            once, policy=self._policy, what="elevenlabs.text_to_speech"
        )
        try:
            audio = base64.b64decode(data["audio_base64"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise RetryableError("elevenlabs sent no usable audio", code="invalid_audio") from exc
        path = out_dir / f"voice{extension}"
        with atomic_output(path) as tmp:
            tmp.write_bytes(audio)
        alignment = data.get("alignment")
        ends = alignment.get("character_end_times_seconds") if isinstance(alignment, dict) else None
        if isinstance(ends, list) and ends:
            duration = float(max(ends))
        else:
            duration = (await probe(path, self._settings)).duration_s
        cost = {
            "provider": "elevenlabs",
            "model": self._settings.elevenlabs_model_id,
            "characters": len(text),
            "request_id": headers.get("request-id"),
            # The history item holds the audio again (GET /v1/history/{id}/audio).
            "history_item_id": headers.get("history-item-id"),
        }
        return VoiceTrack(
            path=path,
            duration_s=duration,
            scene_starts_s=scene_starts(alignment, offsets),
            cost={k: v for k, v in cost.items() if v is not None},
        )

    async def _request(
        self, voice_id: str, text: str, output_format: str
    ) -> tuple[dict[str, Any], httpx.Headers]:
        url = f"/v1/text-to-speech/{quote(voice_id, safe='')}/with-timestamps"
        body = {"text": text, "model_id": self._settings.elevenlabs_model_id}
        try:
            response = await self._client.post(
                url, params={"output_format": output_format}, json=body
            )
        except httpx.TransportError as exc:
            raise transport_error("elevenlabs", exc) from exc
        if response.status_code != 200:
            raise error_for(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise RetryableError("elevenlabs sent invalid JSON", code="invalid_audio") from exc
        if not isinstance(data, dict):
            raise RetryableError("elevenlabs sent an unexpected body", code="invalid_audio")
        return data, response.headers


__all__ = ["ElevenLabsVoiceProvider", "error_for", "join_narration", "make_client"]
