"""Script from the Anthropic Messages API: one forced tool call returns the scenes as JSON.

The SDK (``anthropic`` ≥ 1.0) runs on ``httpx2``; one ``AsyncAnthropic`` per worker process is
built by :func:`make_client` with the SDK's own retries off, so the shared policy in
:mod:`videoq.providers.http` (injectable sleep, one classification) applies here as it does to
the other providers.

The brief is customer text: it goes into the user turn as JSON inside ``<brief>`` tags, and the
system prompt says it is data, never instructions. Whatever the model answers is then checked
(non-empty strings, lengths) before it becomes a :class:`Script`.

Every answer is paid for, so a usable one is used: a script with another scene count than
asked is fitted (fewer scenes are kept as they are; extra ones are folded into the last, which
carries the call to action) rather than bought again. A malformed answer (no script, a scene
without text) is asked for once more, then fails the job for good (``invalid_script``):
retrying the job would only buy more of the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
from anthropic.types import Message

from videoq.errors import PermanentError
from videoq.prompts import TOOL_NAME, request
from videoq.providers import briefs
from videoq.providers.http import RetryPolicy, call_with_retries, classify, transport_error
from videoq.types import Scene, Script, scene_count, scene_durations

if TYPE_CHECKING:
    from videoq.providers.briefs import Taste
    from videoq.providers.limits import Limiter
    from videoq.settings import Settings
    from videoq.types import Brief

DEFAULT_BASE_URL = "https://api.anthropic.com"
MAX_NARRATION_CHARS = 400
MAX_PROMPT_CHARS = 1000
#: A scene shorter than this gets an equal share instead of one weighted by its words.
MIN_SCENE_S = 1.0
#: Paid answers one script may take: the first, and one more when it was malformed.
MAX_ASKS = 2


def weighted_durations(total_s: float, narrations: list[str]) -> list[float]:
    """Scene lengths in proportion to their words, adding up exactly to ``total_s``."""
    weights = [max(3, len(text.split())) for text in narrations]
    shares = [round(total_s * w / sum(weights), 3) for w in weights[:-1]]
    durations = [*shares, round(total_s - sum(shares), 3)]
    if min(durations) < MIN_SCENE_S:
        return scene_durations(total_s, len(narrations))
    return durations


def fitted(narrations: list[str], prompts: list[str], count: int) -> tuple[list[str], list[str]]:
    """At most ``count`` scenes: extra ones are folded into the last kept scene (their
    narration appended, the last scene's shot kept, as it carries the call to action)."""
    if len(narrations) > count:
        tail = " ".join(narrations[count - 1 :])
        narrations = [*narrations[: count - 1], tail]
        prompts = [*prompts[: count - 1], prompts[-1]]
    return [n[:MAX_NARRATION_CHARS] for n in narrations], prompts


def make_client(
    settings: Settings, transport: httpx2.AsyncBaseTransport | None = None
) -> anthropic.AsyncAnthropic:
    """The process's Anthropic client: base URL from settings, SDK retries off (ours apply)."""
    key = settings.anthropic_api_key
    if key is None:
        raise ValueError("ANTHROPIC_API_KEY is not set")
    timeout = httpx2.Timeout(settings.anthropic_timeout_s, connect=10.0)
    connections = settings.anthropic_concurrency * 2
    # Keep-alive as large as the pool: see keepalive_limits (httpcore2 shares the code).
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    if transport is None:
        http_client = anthropic.DefaultAsyncHttpxClient(timeout=timeout, limits=limits)
    else:
        http_client = anthropic.DefaultAsyncHttpxClient(
            timeout=timeout, limits=limits, transport=transport
        )
    return anthropic.AsyncAnthropic(
        api_key=key.get_secret_value(),
        base_url=settings.anthropic_base_url or DEFAULT_BASE_URL,
        max_retries=0,
        timeout=timeout,
        http_client=http_client,
    )


async def create_message(client: anthropic.AsyncAnthropic, body: dict[str, Any]) -> Message:
    """One Messages API call, its failures classified (:func:`~videoq.providers.http.classify`):
    retryable or permanent, with the API's error type in the message."""
    try:
        message: Message = await client.messages.create(**body)
        return message
    except anthropic.APIStatusError as exc:
        error = exc.body.get("error") if isinstance(exc.body, dict) else None
        kind = error.get("type", "") if isinstance(error, dict) else ""
        text = error.get("message", "") if isinstance(error, dict) else str(exc)
        raise classify(
            "anthropic",
            exc.status_code,
            headers=exc.response.headers,
            message=f"{kind}: {text}" if kind else text,
        ) from exc
    except anthropic.APIConnectionError as exc:  # includes APITimeoutError
        raise transport_error("anthropic", exc) from exc


class _Claude:
    """What every caller of Claude holds: the process's client, the settings, the limit on
    concurrent calls (shared by scripts and briefs) and the retry policy."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        settings: Settings,
        *,
        limiter: Limiter,
        policy: RetryPolicy,
    ) -> None:
        self._client = client
        self._settings = settings
        self._limiter = limiter
        self._policy = policy

    async def _ask(self, body: dict[str, Any], what: str) -> Message:
        """One answer to ``body``, each try within the limit, retried by the policy."""

        async def once() -> Message:
            async with self._limiter.slot():
                return await create_message(self._client, body)

        return await call_with_retries(once, policy=self._policy, what=what)


class AnthropicScriptProvider(_Claude):
    """A :class:`~videoq.providers.ScriptProvider` on Claude."""

    #: Its calls are paid for: the pipeline reserves them against the tenant's budget.
    paid = True

    async def write_script(self, brief: Brief) -> Script:
        """A checked script of :func:`scene_count` scenes (an answer with another count is
        fitted to it); a malformed answer is asked for once more."""
        count = scene_count(brief.duration_s)
        body = request(brief, count, self._settings)
        spent = {"input_tokens": 0, "output_tokens": 0}
        for ask in range(1, MAX_ASKS + 1):
            message = await self._ask(body, "anthropic.messages")
            try:
                script = self._parse(message, brief, count)
            except PermanentError as exc:
                if exc.code != "invalid_script" or ask == MAX_ASKS:
                    raise
                # Paid for all the same: counted in the cost of the script that follows.
                spent["input_tokens"] += message.usage.input_tokens
                spent["output_tokens"] += message.usage.output_tokens
                continue
            for name, tokens in spent.items():
                script.cost[name] += tokens
            script.cost["asks"] = ask
            return script
        raise AssertionError("unreachable")

    def _parse(self, message: Message, brief: Brief, count: int) -> Script:
        if message.stop_reason == "refusal":
            raise PermanentError("anthropic refused to write this script", code="content_refused")
        if message.stop_reason == "max_tokens":
            raise PermanentError(
                "the script was cut off at anthropic_max_tokens; raise it", code="script_truncated"
            )
        block = next(
            (b for b in message.content if b.type == "tool_use" and b.name == TOOL_NAME), None
        )
        if block is None or not isinstance(block.input, dict):
            raise PermanentError("anthropic answered without the script", code="invalid_script")
        data: dict[str, Any] = block.input
        scenes = data.get("scenes")
        if not isinstance(scenes, list) or not scenes:
            raise PermanentError("anthropic wrote no scenes", code="invalid_script")
        narrations: list[str] = []
        prompts: list[str] = []
        for scene in scenes:
            narration = scene.get("narration") if isinstance(scene, dict) else None
            prompt = scene.get("visual_prompt") if isinstance(scene, dict) else None
            if not (isinstance(narration, str) and narration.strip()):
                raise PermanentError("a scene has no narration", code="invalid_script")
            if not (isinstance(prompt, str) and prompt.strip()):
                raise PermanentError("a scene has no visual prompt", code="invalid_script")
            narrations.append(narration.strip())
            prompts.append(prompt.strip()[:MAX_PROMPT_CHARS])
        narrations, prompts = fitted(narrations, prompts, count)
        durations = weighted_durations(float(brief.duration_s), narrations)
        title = data.get("title")
        usage = message.usage
        cost = {
            "provider": "anthropic",
            "model": message.model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "request_id": message._request_id,
        }
        if not (isinstance(title, str) and title.strip()):
            title = brief.product_name
        return Script(
            title=title.strip()[:200],
            scenes=[
                Scene(narration=n, visual_prompt=p, duration_s=d)
                for n, p, d in zip(narrations, prompts, durations, strict=True)
            ],
            cost=cost,
        )


class AnthropicBriefWriter(_Claude):
    """A :class:`~videoq.providers.briefs.BriefWriter` on Claude: one forced, strict tool call
    (:func:`videoq.providers.briefs.request`)."""

    async def write_briefs(self, taste: Taste, count: int) -> list[dict[str, Any]]:
        body = briefs.request(taste, count, self._settings)
        message = await self._ask(body, "anthropic.briefs")
        block = next(
            (b for b in message.content if b.type == "tool_use" and b.name == briefs.TOOL_NAME),
            None,
        )
        written = block.input.get("briefs") if block and isinstance(block.input, dict) else None
        if not isinstance(written, list):
            raise PermanentError("anthropic answered without briefs", code="invalid_briefs")
        return [
            {k: b.get(k) for k in briefs.FIELDS} for b in written[:count] if isinstance(b, dict)
        ]
