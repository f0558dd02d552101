"""The `kdc` command line: the only layer that prints, exits and parses options (see cli.app)."""

from kdcompress.cli.app import app, main

__all__ = ["app", "main"]
