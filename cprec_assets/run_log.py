"""The ``log`` callable that in-process assets hand to cprec_core's long loops (next-item
training, candidate sets, scoring): each line goes to the Dagster run log
(``context.log.info``) and to stdout, as the trainers' Pipes reporter does
(cprec_assets.pipes_reporter). Stdout is the console of ``make demo``, whose Dagster console
logger shows warnings only (cprec_assets.demo), and the step's captured stdout under
``dagster dev``."""

from __future__ import annotations

from typing import Callable

import dagster as dg


def run_log(context: dg.AssetExecutionContext) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(message, flush=True)
        context.log.info(message)

    return log
