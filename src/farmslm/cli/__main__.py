"""`python -m farmslm.cli …`: the same commands as the `farmslm` script (benchmarks start the server this way)."""

from farmslm.cli import app

app()
