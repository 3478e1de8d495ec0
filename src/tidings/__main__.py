"""``python -m tidings`` runs the command line."""

from tidings._entry import main

main()
