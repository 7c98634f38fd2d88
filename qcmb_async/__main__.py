"""``python -m qcmb_async``: the ``qcmb-async`` command line."""

from qcmb_async.cli import main

if __name__ == "__main__":
    main()
