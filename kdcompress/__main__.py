"""`python -m kdcompress` runs the `kdc` command line."""

from kdcompress.cli import main

if __name__ == "__main__":  # a spawned worker process (export.Exports) imports this module without running it
    main()
