"""Private implementation of qcmb_async: one module per pipeline stage (see docs/architecture.md)."""
