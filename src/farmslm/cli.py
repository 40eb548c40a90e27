"""The `farmslm` command table: parse flags, call a stage's run(); no logic here.

Each command imports its stage lazily so `farmslm --help` stays fast and nothing runs at import.
Example: farmslm rules --sensors '{"temp_c": 36, "period": "day"}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="farmslm: build, evaluate and serve a sensor-aware tomato assistant.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and verify the tomato QA dataset.", no_args_is_help=True)
vocab_app = typer.Typer(help="Trim the vocabulary to the domain.", no_args_is_help=True)
experiment_app = typer.Typer(help="Fine-tuning experiments (rank sweep, PEFT comparison).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(vocab_app, name="vocab")
app.add_typer(experiment_app, name="experiment")


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr, non-zero exit: how every user mistake ends."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# ---- domain (issue: dataset) -------------------------------------------------------------------

@app.command()
def rules(sensors: str = typer.Option(..., help="Readings as JSON, e.g. '{\"temp_c\": 31.5, \"period\": \"day\"}'."),
          lang: str = typer.Option("en", help="Language of the messages: en|ko.")) -> None:
    """Print the rule engine's warning codes (and messages) for the readings, as JSON."""
    from farmslm.domain import rules as rules_mod
    from farmslm.domain.sensors import SensorError, parse_json
    try:
        readings = parse_json(sensors)
    except SensorError as exc:
        fail(str(exc))
    codes = rules_mod.evaluate(readings)
    typer.echo(json.dumps({"warnings": codes, "messages": {c: rules_mod.message(c, lang) for c in codes}},
                          ensure_ascii=False))

# ---- dataset ----------------------------------------------------------------------------------

# ---- model core: load, export, quantize, bench --------------------------------------------------

# ---- runtime: chat, ask ------------------------------------------------------------------------

# ---- vocabulary --------------------------------------------------------------------------------

# ---- pruning -----------------------------------------------------------------------------------

# ---- training ----------------------------------------------------------------------------------

# ---- evaluation and build ----------------------------------------------------------------------

# ---- serving -----------------------------------------------------------------------------------


if __name__ == "__main__":
    app()
