"""Embeddings: text (a finished video's brief and script) as a vector of :data:`DIMENSIONS`
floats, for the feed's similarity search.

One Protocol, :class:`Embedder`, and two implementations: :class:`OpenAIEmbedder`, an
OpenAI-compatible ``POST /v1/embeddings`` over ``httpx`` (live when ``OPENAI_API_KEY`` is set;
retried and classified as every provider is, :mod:`videoq.providers.http`), and
:class:`OfflineEmbedder`, deterministic and network-free: hashed word, word-pair and character
n-grams, signed and projected onto the same number of dimensions. Vectors of different models
are not comparable, so each embedder names its ``model`` and the store keeps it beside every
vector.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from videoq.errors import PermanentError
from videoq.providers.http import (
    RetryPolicy,
    call_with_retries,
    classify,
    keepalive_limits,
    problem_message,
    transport_error,
)

if TYPE_CHECKING:
    from videoq.settings import Settings

#: The size of every embedding: text-embedding-3-small's, asked for explicitly (the
#: ``dimensions`` parameter) so any text-embedding-3 model fits the store's column.
DIMENSIONS = 1536
#: The offline embedder's model name, as stored beside its vectors.
OFFLINE_MODEL = "videoq-offline-ngrams-v1"


class Embedder(Protocol):
    """Turns texts into unit-length vectors of :data:`DIMENSIONS` floats."""

    #: The model the vectors come from: only vectors of one model are compared.
    model: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...

    async def aclose(self) -> None:
        """Close what the embedder holds open (idempotent)."""
        ...


_WORD = re.compile(r"\w+", re.UNICODE)
#: How much each kind of feature counts: whole words most, word pairs (some order), then
#: character trigrams (spelling variants, plurals) least.
_WORD_WEIGHT, _PAIR_WEIGHT, _TRIGRAM_WEIGHT = 1.0, 0.5, 0.2


def _slot(feature: str) -> tuple[int, float]:
    """The dimension a feature lands on and its sign (±1), from a stable hash."""
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % DIMENSIONS, 1.0 if value >> 63 else -1.0


def offline_vector(text: str) -> list[float]:
    """``text`` as a unit vector of hashed n-gram counts (all zeros for text with no word)."""
    words = [w.lower() for w in _WORD.findall(text)]
    vector = [0.0] * DIMENSIONS
    features: list[tuple[str, float]] = [(f"w:{w}", _WORD_WEIGHT) for w in words]
    features += [(f"p:{a} {b}", _PAIR_WEIGHT) for a, b in itertools.pairwise(words)]
    for word in words:
        padded = f"^{word}$"
        features += [(f"c:{padded[i : i + 3]}", _TRIGRAM_WEIGHT) for i in range(len(padded) - 2)]
    for feature, weight in features:
        index, sign = _slot(feature)
        vector[index] += sign * weight
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


class OfflineEmbedder:
    """An :class:`Embedder` with no network: :func:`offline_vector`. Texts sharing words are
    near, texts sharing none are nearly orthogonal; the same text always gives the same
    vector, on every machine."""

    model = OFFLINE_MODEL

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [offline_vector(text) for text in texts]

    async def aclose(self) -> None:
        return None


def make_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's client of the embeddings API: ``embeddings_base_url`` (with or without
    its ``/v1``), the key as a Bearer token."""
    key = settings.openai_api_key
    if key is None:
        raise ValueError("OPENAI_API_KEY is not set")
    root = settings.embeddings_base_url.rstrip("/")
    if not root.endswith("/v1"):
        root += "/v1"
    return httpx.AsyncClient(
        base_url=root + "/",
        headers={"Authorization": f"Bearer {key.get_secret_value()}"},
        timeout=httpx.Timeout(settings.embeddings_timeout_s, connect=10.0),
        limits=keepalive_limits(4),
        transport=transport,
    )


class OpenAIEmbedder:
    """An :class:`Embedder` on an OpenAI-compatible ``POST /v1/embeddings``: one request per
    batch of texts, asking for :data:`DIMENSIONS` floats each."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, *, policy: RetryPolicy):
        self._client = client
        self._policy = policy
        self.model = settings.embeddings_model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        body = {
            "model": self.model,
            "input": list(texts),
            "dimensions": DIMENSIONS,
            "encoding_format": "float",
        }

        async def once() -> list[list[float]]:
            try:
                response = await self._client.post("embeddings", json=body)
            except httpx.TransportError as exc:
                raise transport_error("openai", exc) from exc
            if response.is_error:
                try:
                    detail = problem_message(response.json())
                except ValueError:
                    detail = response.text[:200]
                raise classify(
                    "openai", response.status_code, headers=response.headers, message=detail
                )
            return _vectors(response, len(texts))

        return await call_with_retries(once, policy=self._policy, what="openai.embeddings")

    async def aclose(self) -> None:
        await self._client.aclose()


def _vectors(response: httpx.Response, count: int) -> list[list[float]]:
    """The response's embeddings in input order, checked: one per input, each of
    :data:`DIMENSIONS` finite numbers (anything else is ``invalid_embedding``, permanent: asking
    again would buy the same)."""
    try:
        data: Any = response.json()["data"]
        by_index = {int(item["index"]): item["embedding"] for item in data}
        vectors = [[float(x) for x in by_index[i]] for i in range(count)]
    except (ValueError, KeyError, TypeError) as exc:
        raise PermanentError(
            f"openai: the embeddings answer is malformed ({type(exc).__name__})",
            code="invalid_embedding",
        ) from exc
    for vector in vectors:
        if len(vector) != DIMENSIONS or not all(math.isfinite(x) for x in vector):
            raise PermanentError(
                f"openai: an embedding has {len(vector)} values, not {DIMENSIONS} finite ones "
                "(set VIDEOQ_EMBEDDINGS_MODEL to a model that takes `dimensions`)",
                code="invalid_embedding",
            )
    return vectors


def open_embedder(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    policy: RetryPolicy | None = None,
) -> Embedder:
    """The process's embedder: live when ``OPENAI_API_KEY`` is set (unless ``providers`` is
    ``offline``), else :class:`OfflineEmbedder`."""
    if settings.providers == "offline" or settings.openai_api_key is None:
        return OfflineEmbedder()
    return OpenAIEmbedder(
        make_client(settings, transport),
        settings,
        policy=policy or RetryPolicy.from_settings(settings),
    )
