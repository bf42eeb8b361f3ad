"""What the server accepts, bounded before any parsing: body size, body and header read times,
the content type.

- :class:`RequestLimits` (ASGI middleware): a body over ``max_body_bytes`` is answered 413 as
  soon as its ``content-length`` (or the bytes read so far) says so, before anything parses it;
  a body not received within ``body_timeout`` seconds is answered 408; a POST without a JSON
  content type (or, on the upload paths of an image run, ``multipart/form-data``) is answered
  400 naming the ``content-type`` header. These answers close the
  connection.
- :func:`protocol_with_header_timeout`: uvicorn's h11 protocol, cutting a connection whose
  request line and headers have not all arrived ``header_timeout`` seconds after it started
  waiting for them (a slow client cannot hold a connection; the others keep being served).
"""

from __future__ import annotations

import asyncio
import json

JSON_TYPES = ("application/json",)
MULTIPART = "multipart/form-data"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or media.endswith("+json")


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail, "problems": [detail]}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: body size limit, body read timeout and the JSON content type (see module)."""

    def __init__(self, app, max_body_bytes: int, body_timeout: float, upload_prefix: str | None = None) -> None:
        self.app, self.max_body_bytes, self.body_timeout = app, max_body_bytes, body_timeout
        self.upload_prefix = upload_prefix  # paths that take multipart/form-data instead of JSON

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        problem = self._header_problem(scope["method"], headers, scope.get("path", ""))
        if problem:
            await _refuse(send, *problem)
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _header_problem(self, method: str, headers: dict, path: str = "") -> tuple[int, str] | None:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return 413, (f"body: {int(length)} bytes; at most {self.max_body_bytes} per request "
                         f"(polytask serve --max-body-bytes)")
        if method in ("POST", "PUT", "PATCH") and self.upload_prefix and path.startswith(self.upload_prefix):
            kind = headers.get(b"content-type", b"").decode("latin-1")
            if kind.split(";", 1)[0].strip().lower() != MULTIPART:
                return 400, (f"content-type: {kind[:100]!r} is not {MULTIPART}; upload the image files as "
                             f"{MULTIPART} parts named 'images'")
            return None
        if method in ("POST", "PUT", "PATCH"):
            kind = headers.get(b"content-type")
            if kind is None:
                return 400, "content-type: header missing; send the body as JSON with 'content-type: application/json'"
            if not _is_json(kind.decode("latin-1")):
                return 400, (f"content-type: {kind.decode('latin-1')[:100]!r} is not JSON; send the body as JSON "
                             f"with 'content-type: application/json'")
        return None

    async def _read_body(self, receive, send) -> bytes | None:
        """The whole body, or None once a 413 or 408 has been sent (or the client left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                await _refuse(send, 408, f"body: not received within {self.body_timeout:g} s "
                                         f"(polytask serve --body-timeout)")
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _refuse(send, 413, f"body: more than {self.max_body_bytes} bytes; at most "
                                         f"{self.max_body_bytes} per request (polytask serve --max-body-bytes)")
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def protocol_with_header_timeout(header_timeout: float):
    """uvicorn's h11 HTTP protocol class, closing a connection whose request line and headers do
    not all arrive within ``header_timeout`` seconds of it starting to wait for them."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is None or self.cycle.response_complete:  # waiting for the next request
                self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are complete
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.logger.warning("closing a connection: request headers not received within %g s", header_timeout)
                self.transport.close()

    return HeaderTimeoutProtocol


__all__ = ["RequestLimits", "protocol_with_header_timeout"]
