"""The image/snapshot store: blobs by key behind one Protocol (`base.Store`), on a local
directory (`local`), S3 (`s3`) or GCS (`gcs`), chosen by URL (`registry.open_store`). What is
kept in it (content-addressed layers, snapshot manifests) is ravel/snapshot/layers.py."""

from .base import Store
from .registry import open_store

__all__ = ["Store", "open_store"]
