"""videoq: an asyncio job service that turns a brief into a finished AI-generated video.

``from videoq import Client`` is the async SDK; see :class:`videoq.client.Client`.
"""

from videoq.client import ApiError, Client, Event, Job

__all__ = ["ApiError", "Client", "Event", "Job"]
__version__ = "0.1.0"
