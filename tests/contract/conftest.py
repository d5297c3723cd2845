"""The stores every Store contract runs against: a local directory, S3 on moto's server and GCS
on its emulator, each server on 127.0.0.1, started once per module and ended by its PID."""

from __future__ import annotations

import os

import pytest

from ravel.paths import paths
from ravel.store import open_store

from .servers import env, gcs_emulator, make_bucket, moto_server


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with moto_server() as s3, gcs_emulator(tmp_path_factory.mktemp("gcs")) as gcs:
        with env({**s3, **gcs}):
            yield


@pytest.fixture(params=["local", "s3", "gs"])
def store(request, servers, tmp_path):
    kind = request.param
    if kind == "local":
        return open_store(f"file://{tmp_path}/store", paths())
    url = f"{kind}://bucket-{os.getpid()}-{abs(hash(request.node.name)) % 10**8}/some/prefix"
    make_bucket(url)
    return open_store(url, paths())
