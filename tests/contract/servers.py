"""Local object-store servers for tests: moto's S3 server and a GCS emulator, each a real
HTTP server on 127.0.0.1 started as a subprocess and ended by its PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {url} within {START_TIMEOUT:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """Yields the environment that points boto3 at the server (AWS_ENDPOINT_URL and dummy keys)."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, proc, "moto_server")
        yield {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        _stop(proc)


@contextmanager
def gcs_emulator(data_dir: Path) -> Iterator[dict[str, str]]:
    """Yields the environment that points google-cloud-storage at the emulator."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "gcp-storage-emulator"), "-d", str(data_dir), "start", "--port", str(port),
                             "-H", "127.0.0.1", "-q", "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/storage/v1/b", proc, "gcp-storage-emulator")
        yield {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "ravel-test"}
    finally:
        _stop(proc)


@contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(url: str) -> None:
    """Create the bucket of an s3:// or gs:// URL on the test server (stores never create buckets)."""
    scheme, rest = url.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if scheme == "s3":
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)
    else:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        storage.Client(project="ravel-test", credentials=AnonymousCredentials()).create_bucket(bucket)
