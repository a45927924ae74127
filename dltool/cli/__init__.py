"""The command line: the Typer commands (commands.py) and what renders their results on the
terminal (progress bars; the render_*.py tables of shapes, data, eval, predict, runs and trials;
listings). It is the only package that imports rich: the others return data.

It may import every other package of dltool (torch-using ones inside the commands that need them,
so `dltool --help` stays instant); nothing in dltool imports it but `dltool.__main__`.
"""

from dltool.cli.commands import app, main

__all__ = ["app", "main"]
