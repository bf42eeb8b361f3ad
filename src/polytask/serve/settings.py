"""The server's settings: batching and request limits (``polytask serve --help`` sets them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Args:
        max_batch_size: inputs per model call at most (concurrent requests are batched up to it).
        max_wait_ms: how long the first request of a batch waits for more (0: take what is queued).
        batching: False runs one request at a time (``max_batch_size`` 1).
        max_inputs: inputs per request at most.
        max_chars: characters per input at most (all fields of an input together).
        max_new_tokens: the largest ``max_new_tokens`` a request may ask of a generation task
            (``None``: each task's configured value).
        batch_size: inputs per forward pass inside one model call.
        max_body_bytes: request body size at most (413 before parsing; default 2 MiB: 64 inputs of
            2000 characters, JSON-escaped, fit).
        header_timeout: seconds for a request's line and headers to arrive (then the connection is cut).
        body_timeout: seconds for a request's body to arrive (then 408).
        max_image_bytes: an image run's encoded image size at most, per image (413; default 8 MiB;
            raise ``max_body_bytes`` too for large photos).
        max_image_pixels: an image's width x height at most (413, read before decoding; default 40 M).
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    batching: bool = True
    max_inputs: int = 64
    max_chars: int = 2000
    max_new_tokens: int | None = None
    batch_size: int = 64
    max_body_bytes: int = 2 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    @property
    def effective_batch_size(self) -> int:
        return self.max_batch_size if self.batching else 1
