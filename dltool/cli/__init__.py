"""The command line: the Typer commands (commands.py) and what renders their results (progress
bars, shape and listing tables) on the terminal.

It may import every other package of dltool (torch-using ones inside the commands that need them,
so `dltool --help` stays instant); nothing in dltool imports it but `dltool.__main__`.
"""

from dltool.cli.commands import app, main

__all__ = ["app", "main"]
