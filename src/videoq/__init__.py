"""videoq: an asyncio job service that turns a brief into a finished AI-generated video.

``from videoq import Client`` is the async SDK; see :class:`videoq.client.Client`.
"""

from videoq.client import (
    ApiError,
    ApiKey,
    AuthenticationError,
    Client,
    ConflictError,
    Event,
    FeedItem,
    Interaction,
    Job,
    NotFoundError,
    PermissionDenied,
    RateLimitError,
    Schedule,
    ServerError,
    ValidationError,
)

__all__ = [
    "ApiError",
    "ApiKey",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Event",
    "FeedItem",
    "Interaction",
    "Job",
    "NotFoundError",
    "PermissionDenied",
    "RateLimitError",
    "Schedule",
    "ServerError",
    "ValidationError",
]
__version__ = "0.1.0"
