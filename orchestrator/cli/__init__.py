"""The `acla-orch` command line: every verb's flags read and checked here, then handed to the rooms below as
dataclasses and plain values (nothing outside this package reads argparse)."""
from orchestrator.cli.main import main

__all__ = ["main"]
