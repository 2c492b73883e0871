"""The pages' Jinja2 environment (autoescaped), shared by the pages and their error page."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from plangate.printable import printable

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))


def _shown(value: object) -> object:
    """Show every text a page prints with its bidi and invisible characters as escapes.

    Escaping HTML is not enough: a plan whose argument is `EVIL\u202eEMCA` read as another
    vendor's name on the page, while the terminal (`printable`) showed what runs.
    """
    if isinstance(value, Markup):
        return Markup(printable(str(value)))
    return printable(value) if isinstance(value, str) else value


# Applied to every `{{ ... }}` (after filters): no text reaches a page unescaped this way.
templates.env.finalize = _shown
# Shown as text (autoescaped), unlike `tojson`, which escapes `<`, `>` and `&` for scripts.
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
