"""The result store, public: open one to read what runs stored (``qcmb-async report`` does).

>>> from qcmb_async.store import ResultStore
>>> with ResultStore(path, readonly=True) as store:
...     runs = list(store.runs())

See docs/store.md for what is stored and how a rerun resumes from it.
"""

from __future__ import annotations

from ._core.store import ResultStore
from ._core.store_layout import default_store_path, store_path
from .errors import StoreError

__all__ = ["ResultStore", "StoreError", "default_store_path", "store_path"]
