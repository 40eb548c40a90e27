"""Shared pieces of the command table: the Typer apps and how a user mistake ends.

Example: farmslm --help
"""

from __future__ import annotations

import typer

app = typer.Typer(help="farmslm: build, evaluate and serve a sensor-aware tomato assistant.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and verify the tomato QA dataset; describe the knowledge base.", no_args_is_help=True)
vocab_app = typer.Typer(help="Trim the vocabulary to the domain.", no_args_is_help=True)
experiment_app = typer.Typer(help="Fine-tuning experiments (rank sweep, PEFT comparison).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(vocab_app, name="vocab")
app.add_typer(experiment_app, name="experiment")


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr, non-zero exit: how every user mistake ends."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
