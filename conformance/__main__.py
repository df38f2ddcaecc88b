"""``python -m conformance``: the same as the ``conformance`` command."""

from conformance.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
