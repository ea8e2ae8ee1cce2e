"""The commands of the `nightshift` CLI, one module per noun, registered in `app/cli.py`.

Each module exposes a typer `app` (a command group) or a command function; the helpers they
share are in `common.py`. Nothing here imports `app.cli`.
"""
