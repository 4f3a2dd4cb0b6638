"""The pages a drill may link to, and the check that a link resolves to a page and a view that exist.

Streamlit derives a page's url path from its file name in ``app_pages/`` (``app_pages/memory.py`` → ``memory``).
A link's page must be one of those files, or one of ``PAGES_IN_PROGRESS`` (pages whose files are being written
and whose views cannot be checked yet, so links to them name no view). A view is checked against the page's own
source: the words must appear there verbatim (a tab's label, a chart's title, a button), so renaming a tab breaks
the test instead of the link. A query is checked against what the page reads (the Step through page's panels,
``kvviz.share.PANELS``).

What it does not do: open pages or follow links in a browser.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from kvviz.drills.records import Link
from kvviz.share import PANELS

APP_PAGES = Path(__file__).resolve().parents[2] / "app_pages"
PAGES_IN_PROGRESS = ("lessons", "cache_policies")
PAGE_TITLES = {"step_through": "Step through", "memory": "Memory", "attention": "Attention", "speed": "Speed",
               "serving": "Serving", "lessons": "Lessons", "cache_policies": "Cache policies", "drills": "Drills"}


def known_pages(app_pages: Path = APP_PAGES) -> set[str]:
    """Url paths of the page files in ``app_pages``, plus the pages in progress."""
    return {path.stem for path in app_pages.glob("*.py")} | set(PAGES_IN_PROGRESS)


def link_problems(link: Link, app_pages: Path = APP_PAGES) -> list[str]:
    """Why ``link`` does not resolve (empty when it does)."""
    if link.page not in known_pages(app_pages):
        return [f"no page '{link.page}' (pages: {', '.join(sorted(known_pages(app_pages)))})"]
    problems = []
    source_file = app_pages / f"{link.page}.py"
    if link.view:
        if not source_file.exists():
            problems.append(f"'{link.page}' has no file yet, so its view '{link.view}' cannot be checked")
        elif link.view not in source_file.read_text(encoding="utf-8"):
            problems.append(f"the page '{link.page}' has no view '{link.view}'")
    if link.query:
        params = parse_qs(link.query)
        if link.page != "step_through" or set(params) != {"tab"} or params["tab"][-1] not in PANELS:
            problems.append(f"the page '{link.page}' does not read the query '{link.query}'")
    return problems


def describe(link: Link) -> str:
    """'the Memory page' / 'the Serving page, Prefix caching' as a link's words."""
    title = PAGE_TITLES.get(link.page, link.page.replace("_", " ").title())
    if link.query.startswith("tab="):
        return f"the {title} page, {PANELS.get(link.query.removeprefix('tab='), '')} panel"
    return f"the {title} page" + (f": {link.view}" if link.view else "")
