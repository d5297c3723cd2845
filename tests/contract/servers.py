"""Local cloud servers for tests and benches: moto's server (every AWS service ravel uses: EC2,
SSM, STS, S3...; tests/fakes/moto_server.py) and a GCS emulator, each a real HTTP server on
127.0.0.1 started as a subprocess and ended by its PID. The one place these servers are started."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent
MOTO_FAKE = Path(__file__).resolve().parents[1] / "fakes" / "moto_server.py"
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
def moto_server(*, log: str | os.PathLike[str] | None = None, delay: float = 0.0, namespace: str | None = None,
                stderr: str | os.PathLike[str] | None = None) -> Iterator[dict[str, str]]:
    """moto's server (tests/fakes/moto_server.py) on 127.0.0.1, on a port the kernel picks.

    Yields the environment that points boto3 at it: AWS_ENDPOINT_URL and dummy keys.
    `log`: one JSON line per AWS call there; `delay`: seconds added to every call; `namespace`:
    run it inside that network namespace (its own 127.0.0.1: only a client in the same
    namespace reaches it); `stderr`: keep its log in this file (else a temporary one, shown when
    it does not start)."""
    argv = [sys.executable, str(MOTO_FAKE), *(["--log", str(log)] if log else []),
            *(["--delay", str(delay)] if delay else [])]
    if namespace:
        argv = ["ip", "netns", "exec", namespace, *argv]  # execs the server: the PID is moto's own
    err = open(stderr, "w+b") if stderr else tempfile.TemporaryFile()
    # stdout carries the one line "port N"; stderr goes to a file, never to a pipe nobody reads
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=MOTO_FAKE.parents[2])
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if not line.startswith("port "):
            proc.kill()
            proc.wait(5)
            err.seek(0)
            raise RuntimeError(f"moto's server did not start within {START_TIMEOUT:.0f} s (exit {proc.returncode}): "
                               f"{err.read().decode(errors='replace')[-2000:]}")
        port = int(line.split()[1])
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        err.close()


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
