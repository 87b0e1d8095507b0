"""Voice from ElevenLabs text-to-speech, over plain ``httpx``.

One request per script, ``POST /v1/text-to-speech/{voice_id}/with-timestamps``: the whole
narration in one voice (continuous intonation, one request id), and the character alignment
tells where each scene's narration starts, so compositing cuts the picture where the voice
moves on, and when each word is said, which the captions follow
(:func:`videoq.captions.words_from_alignment`).

The voice is paid work, bought once per job across attempts: before the request leaves, the
stage notes that it is about to buy (``since``, through :class:`~videoq.providers.PaidWork`).
A later attempt whose note says a purchase was under way (the worker died, or the answer was
lost, with the track unrecorded) first looks for it in the account's history
(``GET /v1/history`` by voice, model and date, matching the exact text; the audio from
``GET /v1/history/{id}/audio``, the alignment from the item), and so does a request retried
after an ambiguous failure (a timeout, a 5xx). History is kept unless the account or request
turns logging off (zero retention): then a lost track is bought again.

Errors come in two shapes, ``{"detail": [{"loc", "msg", "type"}]}`` (422) and
``{"detail": {"status", "message"}}`` (everything else); both are read. Of the two 429s,
``too_many_concurrent_requests`` means *our* plan's concurrency is used up (retry soon, at a
steady pace: one of our own requests is about to finish) and ``system_busy`` means ElevenLabs
is overloaded (back off exponentially).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import structlog

from videoq.captions import words_from_alignment
from videoq.errors import PermanentError, ProviderError, RetryableError
from videoq.ffmpeg import atomic_output, probe
from videoq.providers import PaidWork
from videoq.providers.http import (
    MAYBE_DONE,
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
log = structlog.get_logger(__name__)

#: Audio container by ``output_format`` prefix; raw PCM/µ-law/A-law need a header FFmpeg lacks.
EXTENSIONS = {"mp3": ".mp3", "wav": ".wav", "opus": ".ogg"}
#: How far before a noted purchase a history search starts (the clocks may disagree).
CLOCK_SKEW_S = 300
#: Pages of history (100 items each, newest first) searched for a lost purchase.
HISTORY_PAGES = 5


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

    #: Its calls are paid for: the pipeline reserves them against the tenant's budget.
    paid = True

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

    def work_fingerprint(self, script: Script, brief: Brief) -> str:
        """A digest of everything the voice track depends on."""
        text, _ = join_narration(script)
        canonical = json.dumps(
            [brief.voice or self._settings.elevenlabs_voice_id, self._settings.elevenlabs_model_id,
             self._settings.elevenlabs_output_format, text]
        )  # fmt: skip
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    async def speak(self, script: Script, brief: Brief, out_dir: Path) -> VoiceTrack:
        """The plain :class:`~videoq.providers.VoiceProvider` call (nothing noted)."""

        async def ignore(_: dict[str, Any]) -> None:
            return None

        work = PaidWork(previous={}, claimed=frozenset(), note=ignore)
        return await self.speak_once(script, brief, out_dir, work=work)

    async def speak_once(
        self, script: Script, brief: Brief, out_dir: Path, *, work: PaidWork
    ) -> VoiceTrack:
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
        since = work.previous.get("since")
        found = None
        if isinstance(since, int | float):
            found = await self._find(voice_id, text, output_format, float(since))
        if found is None:
            since = time.time()
            await work.note({"since": since})
            failed: list[ProviderError] = []

            async def once() -> tuple[dict[str, Any], dict[str, str]]:
                if failed and failed[-1].code in MAYBE_DONE:
                    earlier = await self._find(voice_id, text, output_format, float(since))
                    if earlier is not None:
                        return earlier
                try:
                    async with self._limiter.slot():
                        return await self._request(voice_id, text, output_format)
                except ProviderError as exc:
                    failed.append(exc)
                    raise

            found = await call_with_retries(
                once, policy=self._policy, what="elevenlabs.text_to_speech"
            )
        data, ids = found
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
            **ids,
        }
        return VoiceTrack(
            path=path,
            duration_s=duration,
            scene_starts_s=scene_starts(alignment, offsets),
            words=words_from_alignment(alignment),
            cost={k: v for k, v in cost.items() if v is not None},
        )

    async def _find(
        self, voice_id: str, text: str, output_format: str, since: float
    ) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The track an earlier request bought: a history item of this voice and model made
        after ``since`` (less the clock skew) with exactly ``text``, as a with-timestamps answer
        (its audio fetched, its alignment from the item); None when the first
        :data:`HISTORY_PAGES` pages hold none."""
        params: dict[str, Any] = {
            "voice_id": voice_id,
            "model_id": self._settings.elevenlabs_model_id,
            "date_after_unix": int(since - CLOCK_SKEW_S),
            "source": "TTS",
            "page_size": 100,
        }
        for _ in range(HISTORY_PAGES):
            page = await self._history(params)
            for item in page.get("history") or []:
                if (
                    isinstance(item, dict)
                    and item.get("text") == text
                    and item.get("state") == "created"
                    and item.get("output_format") in (None, output_format)
                    and isinstance(item.get("history_item_id"), str)
                ):
                    return await self._from_history(item)
            last = page.get("last_history_item_id")
            if not page.get("has_more") or not isinstance(last, str):
                return None
            params["start_after_history_item_id"] = last
        return None

    async def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            data, _ = await self._object("GET", "/v1/history", params=params)
            return data

        return await call_with_retries(once, policy=self._policy, what="elevenlabs.history")

    async def _from_history(self, item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        item_id = str(item["history_item_id"])

        async def once() -> bytes:
            url = f"/v1/history/{quote(item_id, safe='')}/audio"
            try:
                response = await self._client.get(url)
            except httpx.TransportError as exc:
                raise transport_error("elevenlabs", exc) from exc
            if response.status_code != 200:
                raise error_for(response)
            return response.content

        audio = await call_with_retries(once, policy=self._policy, what="elevenlabs.history")
        alignments = item.get("alignments")
        alignment = alignments.get("alignment") if isinstance(alignments, dict) else None
        log.info("voice_found_in_history", history_item_id=item_id)
        data = {"audio_base64": base64.b64encode(audio).decode(), "alignment": alignment}
        ids = {"history_item_id": item_id, "request_id": item.get("request_id")}
        return data, {k: v for k, v in ids.items() if isinstance(v, str)}

    async def _object(
        self, method: str, url: str, **kwargs: Any
    ) -> tuple[dict[str, Any], httpx.Headers]:
        """A request answered by a JSON object, and the answer's headers; failures classified."""
        try:
            response = await self._client.request(method, url, **kwargs)
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

    async def _request(
        self, voice_id: str, text: str, output_format: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        url = f"/v1/text-to-speech/{quote(voice_id, safe='')}/with-timestamps"
        body = {"text": text, "model_id": self._settings.elevenlabs_model_id}
        data, headers = await self._object(
            "POST", url, params={"output_format": output_format}, json=body
        )
        # The history item holds the audio again (GET /v1/history/{id}/audio).
        ids = {
            "request_id": headers.get("request-id"),
            "history_item_id": headers.get("history-item-id"),
        }
        return data, {k: v for k, v in ids.items() if v is not None}


__all__ = ["ElevenLabsVoiceProvider", "error_for", "join_narration", "make_client"]
