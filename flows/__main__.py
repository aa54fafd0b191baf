"""`python -m flows ...` is the `sam2rad` command."""
from flows.cli import main

main()
