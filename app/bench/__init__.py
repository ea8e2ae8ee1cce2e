"""The benchmarks behind `nightshift bench`; the typer commands are in `app.commands.bench`."""
