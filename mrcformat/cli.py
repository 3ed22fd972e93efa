"""Command-line tool `mrc` (placeholder: replaced by the CLI work)."""
import click


@click.group()
def main() -> None:
    """Inspect, validate, decode and export .mrc files."""
