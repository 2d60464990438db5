"""``python -m mlpipe`` runs the CLI."""

from mlpipe.cli import main

main()
