"""Command line entry point: `sessiontap` verbs, wiring flags to the core."""
import click


@click.group()
@click.version_option(package_name="sessiontap")
def main() -> None:
    """sessiontap: see whether an agent conversation really continues."""
