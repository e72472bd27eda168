"""`python -m uet` runs the `uet` command line."""

from uet.cli import main

main()
