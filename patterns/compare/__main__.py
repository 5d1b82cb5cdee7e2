"""Every transport on the same work, under load and under faults, and the decision table.

    python -m patterns.compare --json            # the full run: several minutes
    python -m patterns.compare --json --quick    # the test suite's size (PATTERNS_SCALE=small)

Prints one JSON object: {"load": ..., "faults": ..., "table": {transport: figures},
"rows": [...], "choose_when": [...]}. Without --json, the table's rows as text.
"""

import argparse
import json

from patterns import cli
from patterns.compare import faults, load, table


def parser() -> cli.Parser:
    top = cli.Parser(
        prog="python -m patterns.compare",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--json", action="store_true", help="print one JSON object")
    top.add_argument("--quick", action="store_true", help="the test suite's small run")
    top.add_argument(
        "--only", choices=("load", "faults"), help="run one half (the other is left empty)"
    )
    cli.add_give_up(top)
    return top


async def everything(quick: bool, only: str | None = None) -> dict:
    loaded = await load.under_load(quick) if only != "faults" else {}
    faulted = await faults.under_faults(quick) if only != "load" else {}
    out = {"scale": "quick" if quick else "full", "load": loaded, "faults": faulted}
    if loaded:
        figures = table.figures(loaded, faulted)
        out |= {
            "table": figures,
            "rows": table.rows(figures),
            "choose_when": table.choose_when(figures),
        }
    return out


async def main(options: argparse.Namespace) -> None:
    results = await everything(options.quick, options.only)
    if options.json:
        print(json.dumps(results, indent=1), flush=True)
        return
    for row in results.get("rows", []):
        print(row["transport"])
        for column, cell in list(row.items())[1:]:
            print(f"  {column}: {cell}")
    for sentence in results.get("choose_when", []):
        print(f"- {sentence}")


if __name__ == "__main__":
    arguments = parser().parse_args()
    cli.run(main(arguments), "compare", arguments.give_up_after)
