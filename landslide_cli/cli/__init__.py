"""Typer command-line interface: thin layers over the library functions."""
