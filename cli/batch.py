"""``ctnode batch DIR --url URL --out results.xlsx|.csv``: every ZIP under DIR through a
node's ``POST /predict``, one spreadsheet row per archive with the legacy fields.

A few uploads at a time (``--jobs``, default 2: the node analyses one study at a time per
worker, so more only queues), each retried on timeouts, connection errors and 5xx with
exponential backoff; a 4xx is the node's verdict on the archive and is recorded, not
retried. A 202 (the node answered before the analysis finished) is followed by polling the
study's result. The output is rewritten after every archive, atomically, so an interrupted
run loses nothing, and a new run skips archives already in it, except rows that failed for
transport reasons (no answer, or 5xx), which are tried again.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from openpyxl import Workbook, load_workbook

FIELDS = (
    "archive",
    "http_status",
    "processing_status",
    "study_uid",
    "series_uid",
    "probability_of_pathology",
    "pathology",
    "most_dangerous_pathology_type",
    "time_of_processing",
    "error",
    "top_shap_features",
    "seconds",
)
CHUNK = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="DIR", help="searched for *.zip recursively")
    parser.add_argument("--url", required=True, help="the node's HTTP address, e.g. http://h:8000")
    parser.add_argument("--token", default=os.environ.get("CTNODE_TOKEN", ""), help="API token")
    parser.add_argument("--out", type=Path, required=True, help="results.xlsx or results.csv")
    parser.add_argument("--jobs", type=int, default=2, help="uploads at a time (default 2)")
    parser.add_argument("--retries", type=int, default=3, help="per archive (default 3)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    parser.add_argument("--send", action="store_true", help="also send results to the PACS")


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() not in (".csv", ".xlsx"):
        print("--out must end in .csv or .xlsx", file=sys.stderr)
        return 2
    if not args.folder.is_dir():
        print(f"{args.folder} is not a folder", file=sys.stderr)
        return 2
    archives = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() == ".zip")
    rows = {row["archive"]: row for row in read_rows(args.out)}
    todo = [
        p
        for p in archives
        if _key(p, args.folder) not in rows or _retryable(rows[_key(p, args.folder)])
    ]
    client = Client(args.url, args.token, args.timeout, args.retries, args.send)
    refused = client.check_token()
    if refused:
        print(refused, file=sys.stderr)
        return 2
    progress = Progress(len(todo), len(archives) - len(todo))
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(client.analyse, path): path for path in todo}
        for future in as_completed(futures):
            row = {"archive": _key(futures[future], args.folder), **future.result()}
            with lock:
                rows[row["archive"]] = row
                write_rows(args.out, [rows[k] for k in sorted(rows)])
                progress.advance(row)
    progress.close()
    done = [rows[_key(p, args.folder)] for p in archives if _key(p, args.folder) in rows]
    ok = [r for r in done if r["processing_status"] == "Success"]
    seconds = [float(r["seconds"]) for r in done if r["seconds"] not in ("", None)]
    mean = sum(seconds) / len(seconds) if seconds else 0.0
    print(
        f"{len(archives)} archives: {len(ok)} succeeded, {len(done) - len(ok)} failed, "
        f"{len(archives) - len(done)} without an answer; mean {mean:.1f} s per archive; "
        f"results in {args.out}"
    )
    return 0 if len(ok) == len(archives) else 1


class Client:
    """One node's ``POST /predict``, with retries and 202 polling."""

    def __init__(self, url: str, token: str, timeout: float, retries: int, send: bool) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.query = "?send=true" if send else ""

    def analyse(self, archive: Path) -> dict[str, Any]:
        started = time.monotonic()
        status, body = 0, {"error": "not tried"}
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt, 30.0))
            status, body = self._post(archive)
            if status == 202:
                status, body = self._poll(str(body.get("result", "")), started)
            if status and status < 500:
                break
        return _row(status, body, time.monotonic() - started)

    def _post(self, archive: Path) -> tuple[int, dict[str, Any]]:
        """Stream the archive as multipart field ``file``. A node that answers before it
        has read the whole body (401, 413) closes the connection under us: its answer is
        still read from the socket."""
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="upload.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        target = urllib.parse.urlsplit(self.url)
        connection_class = (
            http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        )
        conn = connection_class(target.netloc, timeout=self.timeout)
        try:
            conn.putrequest("POST", f"{target.path}/predict{self.query}")
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(len(head) + archive.stat().st_size + len(tail)))
            if self.token:
                conn.putheader("Authorization", f"Bearer {self.token}")
            conn.endheaders()
            try:
                conn.send(head)
                with open(archive, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        conn.send(chunk)
                conn.send(tail)
            except (BrokenPipeError, ConnectionResetError):
                pass  # an early answer, read below
            response = conn.getresponse()
            return response.status, _json(response.read())
        except (http.client.HTTPException, TimeoutError, OSError) as exc:
            return 0, {"error": f"no answer: {exc}"}
        finally:
            conn.close()

    def _poll(self, path: str, started: float) -> tuple[int, dict[str, Any]]:
        while path.startswith("/") and time.monotonic() - started < self.timeout:
            time.sleep(2.0)
            status, body = self._send(urllib.request.Request(f"{self.url}{path}"))
            if status != 202:
                return status, body
        return 0, {"error": "no result before the timeout"}

    def check_token(self) -> str | None:
        """Why the node refuses this client (None when it accepts): asked once, up front,
        rather than after uploading every archive."""
        status, body = self._send(urllib.request.Request(f"{self.url}/jobs?limit=1"))
        if status == 401:
            return "the node refused the token (use --token or CTNODE_TOKEN)"
        if status != 200:
            return f"the node at {self.url} did not answer ({body.get('error', status)})"
        return None

    def _send(self, request: urllib.request.Request) -> tuple[int, dict[str, Any]]:
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _json(error.read())
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            return 0, {"error": f"no answer: {getattr(exc, 'reason', exc)}"}


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {"error": data[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"error": "unexpected answer"}


def _row(status: int, body: dict[str, Any], seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {field: body.get(field) for field in FIELDS}
    row["http_status"] = status
    row["processing_status"] = body.get("processing_status") or "Failure"
    if row["top_shap_features"] is not None:
        row["top_shap_features"] = json.dumps(row["top_shap_features"])
    if status == 0 and not row["error"]:
        row["error"] = "no answer"
    row["seconds"] = round(seconds, 2)
    return {k: ("" if v is None else v) for k, v in row.items() if k != "archive"}


def _key(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _retryable(row: dict[str, Any]) -> bool:
    status = str(row.get("http_status", ""))
    return not status.isdigit() or int(status) == 0 or int(status) >= 500


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an earlier run's output (none when it does not exist yet)."""
    if not path.exists():
        return []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    sheet = load_workbook(path, read_only=True).active
    assert sheet is not None
    values = list(sheet.iter_rows(values_only=True))
    if not values:
        return []
    header = [str(h) for h in values[0]]
    return [
        dict(zip(header, ("" if v is None else v for v in row), strict=False)) for row in values[1:]
    ]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """All rows, replacing the file atomically."""
    temp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() == ".csv":
        with open(temp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows({f: row.get(f, "") for f in FIELDS} for row in rows)
    else:
        book = Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.title = "results"
        sheet.append(list(FIELDS))
        for row in rows:
            sheet.append([row.get(f, "") for f in FIELDS])
        book.save(temp)
    temp.replace(path)


class Progress:
    """A one-line progress bar on a terminal; a line per archive otherwise (logs, CI)."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.tty = sys.stderr.isatty()
        if skipped:
            print(f"{skipped} archives already in the output: skipped", file=sys.stderr)

    def advance(self, row: dict[str, Any]) -> None:
        self.done += 1
        self.failed += row["processing_status"] != "Success"
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            print(
                f"\r[{bar}] {self.done}/{self.total} ({self.failed} failed)",
                end="",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(
                f"{self.done}/{self.total} {row['archive']}: {row['processing_status']}"
                f" ({row['http_status']}) in {row['seconds']} s",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.tty and self.total:
            print(file=sys.stderr)
