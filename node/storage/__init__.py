"""Durable storage of a node: the only package that imports lmdb.

``store`` (Store: the LMDB environment, one door to it), ``writer`` (StoreWriter: group
commits from async code), ``layout`` (key layouts, Record), ``migrations`` (schema
versions), ``blobstore`` (content-addressed blob files), ``backup`` (hot backups and
restores), ``fs`` (fsync of directories, out-of-space errors), ``errors``."""
