"""The `farmslm` command table: parse flags, call a stage's run(); no logic here.

One module per area (data, model, run); each command imports its stage lazily so `farmslm --help` stays
fast and nothing runs at import.
Example: farmslm rules --sensors '{"temp_c": 36, "period": "day"}'
"""

from farmslm.cli import data, model, run  # noqa: F401  (registers the commands)
from farmslm.cli.common import app

__all__ = ["app"]
