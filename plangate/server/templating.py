"""The pages' Jinja2 environment (autoescaped), shared by the pages and their error page."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from plangate.printable import printable, printable_line
from plangate.store.models import EDIT_PREFIX

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))


class FieldValue(str):
    r"""Text a form field holds, to be sent back: HTML-escaped, never shown with escapes.

    `printable` in a field is what the browser sends back: a summary holding U+202E came back
    as the six characters `\u202e`, saved so, and a backslash more with each later save.
    """

    __slots__ = ()


def _shown(value: object) -> object:
    """Show every text a page prints with its bidi and invisible characters as escapes.

    Escaping HTML is not enough: a plan whose argument is `EVIL\u202eEMCA` read as another
    vendor's name on the page, while the terminal (`printable`) showed what runs. A form
    field's value (`| field`) is left as it is, to be sent back as it is.
    """
    if isinstance(value, FieldValue):
        return value  # still HTML-escaped: autoescaping applies after this
    if isinstance(value, Markup):
        return Markup(printable(str(value)))
    return printable(value) if isinstance(value, str) else value


# Applied to every `{{ ... }}` (after filters): no text reaches a page unescaped this way,
# but a form field's value (`| field`), which is there to be sent back.
templates.env.finalize = _shown
# Shown as text (autoescaped), unlike `tojson`, which escapes `<`, `>` and `&` for scripts.
# Who made a revision: `edit:alice` is alice's edit (the store's spelling, not the page's).
templates.env.filters["editor"] = lambda planner: (
    planner.removeprefix(EDIT_PREFIX) if planner.startswith(EDIT_PREFIX) else None
)
templates.env.filters["field"] = FieldValue
# A list's row: a text's line breaks shown as `\n`, so that 36 of them make no row a screen tall
# and what follows them stays in sight (`truncate(N, true)` then cuts inside a long word,
# where Jinja's default dropped the whole word and left `...` alone).
templates.env.filters["oneline"] = printable_line
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
