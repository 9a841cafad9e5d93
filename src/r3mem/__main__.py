"""`python -m r3mem`: the `r3mem` command line."""

from r3mem.cli.main import main

if __name__ == "__main__":
    main()
