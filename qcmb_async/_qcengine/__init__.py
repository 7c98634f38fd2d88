"""Everything that touches QCEngine: priming its globals, the per-fragment seams, the guardian,
and :func:`~qcmb_async._qcengine.worker.execute_job`, the one function every executor calls.

Executors import this package; the pipeline stages in :mod:`qcmb_async._core` never do.
"""
