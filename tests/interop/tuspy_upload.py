#!/usr/bin/env python3
"""Interop driver: upload one file with tuspy (the official Python tus client).

    python tuspy_upload.py --endpoint URL --file PATH [--chunk-size BYTES]
        [--metadata key=value]... [--no-metadata] [--url-storage PATH]
        [--retries N] [--retry-delay SECONDS] [--header 'Name: value']...

stdout: the final upload URL, alone, on success (exit 0).
stderr: `progress <offset> <size>` lines (one right after the upload is
        created/resumed, then after each chunk; at most ~10/s, the last one
        always printed), `upload-url <url>` once the URL is known, `resume <url>`
        when resuming from --url-storage, `error: ...` on failure (exit 1).
        Bad usage exits 2.

Run it with the venv interpreter ($FERRY_TEST_PYTHON, i.e.
tests/interop/.venv/bin/python) which has tuspy installed.

Notes on tuspy 1.1.0 behaviour (deliberately not worked around):
  * The default chunk size is sys.maxsize, i.e. the whole (remaining) file in
    one PATCH, and tuspy reads each chunk fully into memory before sending.
  * Progress is only known per chunk (tuspy has no in-request progress hook).
  * Without metadata, tuspy still sends an *empty* `Upload-Metadata:` header.
"""

import argparse
import os
import sys
import time

from tusclient import client
from tusclient.exceptions import TusCommunicationError

PROGRESS_INTERVAL = 0.1  # seconds


class Progress:
    """Throttled `progress <offset> <size>` lines on stderr."""

    def __init__(self):
        self.last_time = 0.0
        self.pending = None
        self.last_printed = None

    def report(self, offset, size, force=False):
        now = time.monotonic()
        if force or now - self.last_time >= PROGRESS_INTERVAL:
            self._print((offset, size), now)
        else:
            self.pending = (offset, size)

    def flush(self):
        if self.pending is not None:
            self._print(self.pending, time.monotonic())

    def _print(self, p, now):
        sys.stderr.write("progress %d %d\n" % p)
        sys.stderr.flush()
        self.last_printed = p
        self.pending = None
        self.last_time = now


def parse_args(argv):
    p = argparse.ArgumentParser(description="Upload a file with tuspy.")
    p.add_argument("--endpoint", required=True, help="tus creation URL")
    p.add_argument("--file", required=True, help="file to upload")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="bytes per PATCH (default: tuspy's default, i.e. whole file)",
    )
    p.add_argument(
        "--metadata",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="metadata pair (repeatable); default: filename=<basename>; 'none' = no metadata",
    )
    p.add_argument(
        "--no-metadata",
        action="store_true",
        help="send no metadata (tuspy then sends an empty Upload-Metadata header)",
    )
    p.add_argument(
        "--url-storage",
        default=None,
        metavar="PATH",
        help="tuspy FileStorage (TinyDB JSON) to resume uploads across runs",
    )
    p.add_argument("--retries", type=int, default=0, help="tuspy retries per chunk (default 0)")
    p.add_argument(
        "--retry-delay", type=float, default=1.0, help="seconds between retries (default 1)"
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    a = p.parse_args(argv)
    if a.chunk_size is not None and a.chunk_size < 1:
        p.error("--chunk-size must be a positive integer")
    if not os.path.isfile(a.file):
        p.error("--file is not a regular file: %s" % a.file)

    if a.no_metadata or a.metadata == ["none"]:
        a.meta = {}
    elif a.metadata:
        a.meta = {}
        for kv in a.metadata:
            key, _, value = kv.partition("=")
            if not key:
                p.error("bad --metadata %r" % kv)
            a.meta[key] = value
    else:
        a.meta = {"filename": os.path.basename(a.file)}

    a.headers = {}
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            p.error("bad --header %r (want 'Name: value')" % h)
        a.headers[name.strip()] = value.strip()
    return a


def make_uploader(tus, args, storage):
    kwargs = dict(
        file_path=args.file,
        metadata=args.meta,
        retries=args.retries,
        retry_delay=args.retry_delay,
    )
    if args.chunk_size is not None:
        kwargs["chunk_size"] = args.chunk_size
    if storage is not None:
        kwargs["store_url"] = True
        kwargs["url_storage"] = storage
    return tus.uploader(**kwargs)


def main(argv):
    args = parse_args(argv)
    tus = client.TusClient(args.endpoint, headers=args.headers)

    storage = None
    if args.url_storage:
        from tusclient.storage.filestorage import FileStorage

        parent = os.path.dirname(os.path.abspath(args.url_storage))
        os.makedirs(parent, exist_ok=True)
        storage = FileStorage(args.url_storage)

    try:
        # With store_url, the constructor looks the file's fingerprint up in the
        # storage and, if found, HEADs the stored URL to get the offset.
        uploader = make_uploader(tus, args, storage)
    except TusCommunicationError as e:
        # Only a 4xx answer means the stored upload is gone; anything else
        # (connection refused, 5xx) is a real error.
        if storage is None or not (e.status_code and 400 <= e.status_code < 500):
            raise
        # The stored upload is gone/unusable (e.g. 404): forget it and start
        # over, like tus-js-client does.
        key = make_fingerprint(args.file)
        sys.stderr.write(
            "stale stored upload (%s, status %s); starting a new upload\n" % (e, e.status_code)
        )
        storage.remove_item(key)
        uploader = make_uploader(tus, args, storage)

    resumed = uploader.url is not None
    if resumed:
        sys.stderr.write("resume %s\n" % uploader.url)
    else:
        uploader.set_url(uploader.create_url())
        uploader.offset = 0
    sys.stderr.write("upload-url %s\n" % uploader.url)

    size = uploader.get_file_size()
    progress = Progress()
    progress.report(uploader.offset, size, force=True)
    while uploader.offset < size:
        uploader.upload_chunk()
        progress.report(uploader.offset, size)
    progress.flush()
    if progress.last_printed != (size, size):
        progress.report(size, size, force=True)

    if storage is not None:
        # Mirror tus-js-client's removeFingerprintOnSuccess so that a later run
        # with the same storage uploads afresh instead of "resuming" a finished upload.
        storage.remove_item(make_fingerprint(args.file))
        storage.close()

    sys.stdout.write(uploader.url + "\n")
    sys.stdout.flush()
    return 0


def make_fingerprint(path):
    from tusclient.fingerprint.fingerprint import Fingerprint

    with open(path, "rb") as f:
        return Fingerprint().get_fingerprint(f)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - report anything as a driver failure
        detail = "%s: %s" % (type(e).__name__, e)
        status = getattr(e, "status_code", None)
        body = getattr(e, "response_content", None)
        if status is not None:
            detail += " (status %s)" % status
        if body:
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            detail += " response: %r" % body[:2000]
        sys.stderr.write("error: %s\n" % detail)
        sys.exit(1)
