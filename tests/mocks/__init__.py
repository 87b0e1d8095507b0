"""Local stand-ins for the three provider APIs, built as ASGI apps that check every request
against the providers' published OpenAPI specs (trimmed copies in ``tests/specs``) and answer
with bodies shaped like the real ones. Use them in-process (``httpx.ASGITransport`` /
``httpx2.ASGITransport``) or serve them on a local port (:func:`tests.mocks.server.serve`)."""
