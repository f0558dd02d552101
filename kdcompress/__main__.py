"""`python -m kdcompress` runs the `kdc` command line."""

from kdcompress.cli import main

main()
