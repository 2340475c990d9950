"""`python -m trustedml`: the command line."""

from trustedml.cli import main

main()
