"""The one rich console every command prints to (stderr, so stdout stays machine-readable)."""

from rich.console import Console

console = Console(stderr=True)
