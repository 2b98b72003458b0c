"""The `trainflow` command line, the layer above the flows: cli/main.py is where every command starts."""
