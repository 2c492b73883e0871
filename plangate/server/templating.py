"""The pages' Jinja2 environment (autoescaped), shared by the pages and their error page."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.templating import Jinja2Templates

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
# Shown as text (autoescaped), unlike `tojson`, which escapes `<`, `>` and `&` for scripts.
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
