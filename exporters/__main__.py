"""`python -m exporters` is `gsq-export`."""

from .cli import main

main()
