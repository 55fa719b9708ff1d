"""`python -m gsq_dataset`: the gsq-tokenize command."""

from .cli import main

main()
