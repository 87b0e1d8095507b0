"""The three provider mocks served on loopback, and settings for a worker (or an API) that
calls them live: what every end-to-end test of paid work starts from."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from tests.mocks.anthropic import AnthropicMock
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.replicate import ReplicateMock
from tests.mocks.server import serve
from videoq.settings import Settings


@dataclass
class LiveMocks:
    anthropic: AnthropicMock
    elevenlabs: ElevenLabsMock
    replicate: ReplicateMock
    settings: Settings

    def paid_calls(self) -> dict[str, int]:
        """The calls each paid stage made, by stage."""
        return {
            "script_gen": self.anthropic.calls["messages"],
            "voice_gen": self.elevenlabs.calls["tts"],
            "video_gen": self.replicate.calls["create"],
        }


@contextlib.asynccontextmanager
async def live_mocks(
    settings: Settings, replicate: ReplicateMock | None = None, **overrides: Any
) -> AsyncIterator[LiveMocks]:
    """The mocks on free ports and ``settings`` pointed at them (polls and retries quick,
    ``overrides`` on top); on the way out, no mock may have seen a request off its spec."""
    mocks = (AnthropicMock(), ElevenLabsMock(), replicate or ReplicateMock(polls=1))
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(mock.app)) for mock in mocks]
        live = settings.model_copy(
            update={
                "providers": "auto",
                "anthropic_api_key": SecretStr(mocks[0].key),
                "elevenlabs_api_key": SecretStr(mocks[1].key),
                "replicate_api_token": SecretStr(mocks[2].key),
                "anthropic_base_url": urls[0],
                "elevenlabs_base_url": urls[1],
                "replicate_base_url": urls[2],
                "replicate_poll_s": 0.05,
                "replicate_poll_max_s": 0.1,
                "retry_delays_s": (0.1,),
                **overrides,
            }
        )
        yield LiveMocks(*mocks, settings=live)
        for mock in mocks:
            assert mock.invalid == [], f"{type(mock).__name__} saw requests off the spec"
