"""Receive one file from a multipart/form-data request body straight to disk.

The body is parsed as it streams in (python-multipart's push parser), so an upload of a
whole CT study never sits in memory, and the byte cap is enforced on what actually arrives,
not only on a Content-Length a client may omit or understate. The whole body must arrive
within a deadline, so a client that promises more than it sends (or trickles it) cannot hold
a request, a file and a worker slot forever. The file's name on disk is ours; the client's
file name is never used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header


class UploadError(Exception):
    """An upload that cannot be accepted: the HTTP status to answer and why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


async def receive_file(
    content_type: str,
    body: AsyncIterator[bytes],
    field: str,
    target: Path,
    cap: int,
    timeout: float,
) -> int:
    """Write the multipart part named ``field`` of ``body`` to ``target``; its size.

    Raises ``UploadError`` (413 beyond ``cap`` bytes of body, 408 when the body has not
    all arrived within ``timeout`` seconds, 400 for a body that is not multipart, has no
    such part, or whose part is empty); ``target`` is removed on any failure.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(400, "not_multipart", f"send the archive as multipart field '{field}'")
    with open(target, "wb") as out:
        sink = _FieldSink(field, out)
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": sink.on_part_begin,
                "on_header_field": sink.on_header_field,
                "on_header_value": sink.on_header_value,
                "on_header_end": sink.on_header_end,
                "on_part_data": sink.on_part_data,
            },
        )
        received = 0
        try:
            async with asyncio.timeout(timeout):
                async for chunk in body:
                    received += len(chunk)
                    if received > cap:
                        raise UploadError(
                            413, "too_large", f"the upload exceeds {cap // 2**20} MiB"
                        )
                    parser.write(chunk)
            parser.finalize()
            if not sink.found:
                raise UploadError(400, "no_file", f"the request has no multipart field '{field}'")
            if out.tell() == 0:
                raise UploadError(400, "empty_file", f"the multipart field '{field}' is empty")
            # No fsync: the archive is transient; each instance in it is made durable
            # when the SCP's store path places it in the spool.
            return out.tell()
        except UploadError:
            target.unlink(missing_ok=True)
            raise
        except TimeoutError as exc:
            target.unlink(missing_ok=True)
            raise UploadError(
                408, "upload_timeout", f"the upload did not arrive within {timeout:g} s"
            ) from exc
        except Exception as exc:  # a malformed body: python-multipart's parse errors
            target.unlink(missing_ok=True)
            raise UploadError(
                400, "bad_multipart", f"the multipart body cannot be parsed: {exc}"
            ) from exc


class _FieldSink:
    """Parser callbacks: track each part's Content-Disposition name, write ``field``'s data."""

    def __init__(self, field: str, out: BinaryIO) -> None:
        self.field = field
        self.out = out
        self.found = False
        self.name: str | None = None
        self.header = bytearray()
        self.value = bytearray()

    def on_part_begin(self) -> None:
        self.name = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            _, params = parse_options_header(bytes(self.value))
            self.name = params.get(b"name", b"").decode("utf-8", "replace")
            self.found = self.found or self.name == self.field
        self.header.clear()
        self.value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.name == self.field:
            self.out.write(data[start:end])
