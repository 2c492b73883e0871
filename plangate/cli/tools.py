"""`plangate tools`: the tool catalog executors publish, and which tools they still offer."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from plangate.cli.common import err_console, friendly_errors, group, load_settings
from plangate.cli.render import json_default, shown

if TYPE_CHECKING:
    from plangate.catalog import Offer

app = group("Show the tool catalog: each tool, its effect, and when an executor last offered it.")


@app.command("list", short_help="List the catalog's tools and when each was last offered.")
@friendly_errors
def list_tools(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List every tool in the store's catalog: its effect and when an executor last offered it.

    Each executor says every 30 s that it still offers its tools. A tool none has offered for
    100 s while others are offered is retired (renamed or removed): planners leave it out. While
    no executor offers any tool (all stopped), every tool is planned with as before.
    """
    from plangate.catalog import list_offers
    from plangate.store import open_store

    store = open_store(load_settings().resolved_database_url(), upgrade=False, create=False)
    try:
        offers = list_offers(store)
    finally:
        store.close()
    if as_json:
        for offer in offers:
            typer.echo(json.dumps(asdict(offer), default=json_default))
        return
    if not offers:
        err_console.print("the catalog is empty: no executor has published its tools yet")
        return
    table = Table(box=None, show_edge=False)
    for column in ("TOOL", "EFFECT", "LAST OFFERED"):
        table.add_column(column)
    for offer in offers:
        table.add_row(shown(offer.name), offer.effect, _offered(offer))
    Console().print(table)
    if all(offer.state == "lapsed" for offer in offers):
        err_console.print(
            "no executor has offered any tool for 100 s: are executors running? Plans are made "
            "with every tool meanwhile, and wait for one"
        )


def _offered(offer: Offer) -> str:
    at = f"{offer.offered_at:%Y-%m-%d %H:%M:%S} UTC"
    if offer.state == "retired":
        return f"retired: not offered since {at} (left out of plans)"
    if offer.state == "lapsed":
        return f"not offered since {at}"
    return at
