"""Area commands of the `nightshift` CLI, each a typer app registered in `app/cli.py`."""
