"""`python -m cli ...`: the `trainflow` console script with this checkout's code."""

from cli.main import entry

entry()
