"""Start the app as a server for many people: ``python -m kvviz.ui.serve [streamlit options]``.

It does what ``streamlit run app.py`` does, and first, in this process: reads the server settings (a bad config
file stops the start with a one-line reason, exit status 2), sets torch's thread count once, imports the engine,
takes every object alive after those imports out of the garbage collector's reach (``freeze_imports``), and starts
loading the ``preload`` models in the background, so the default model is loading while the server
starts instead of when the first visitor arrives. A visitor who arrives during the load sees its progress. In
server mode Streamlit's upload limit is set from ``upload_max_bytes`` (rounded up to whole MiB; the exact limit is
checked again where a file is read). Streamlit's XSRF protection is left on.

What it does not do: change anything a page does, or run more than one server (see docs/classroom.md for
replicas).
"""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

from kvviz.errors import KvvizError

APP = Path(__file__).resolve().parents[2] / "app.py"


def streamlit_arguments(extra: list[str], upload_mib: int | None) -> list[str]:
    """The ``streamlit run`` command line: the app, the upload limit (server mode), then the caller's options."""
    arguments = ["streamlit", "run", str(APP), "--browser.gatherUsageStats", "false"]
    if upload_mib is not None:
        arguments += ["--server.maxUploadSize", str(upload_mib)]
    return arguments + extra


def freeze_imports() -> int:
    """Move every object alive now (the imported engine, PyTorch, transformers, plotly, pandas, Streamlit) out of
    the garbage collector's reach; return how many there were.

    Streamlit runs a full collection (``gc.collect(2)``) after every run of a page, holding the GIL. With these
    libraries imported that walks about half a million objects: ~250 ms on a 2-core CPU, during which every other
    session's thread and the model worker stand still, on every click of every session. Objects made by imports live
    as long as the process, so ``gc.freeze()`` leaves them out of every later collection; what sessions make after
    this is still collected as before.
    """
    import pandas  # noqa: F401 - imported here so that its objects are frozen with the rest
    import plotly.graph_objects  # noqa: F401
    import streamlit.runtime  # noqa: F401

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def main(argv: list[str] | None = None) -> int:
    from kvviz.server.queue import set_torch_threads
    from kvviz.ui.server import server_settings

    try:
        settings = server_settings()
    except KvvizError as error:
        print(f"kvviz: error: {error}", file=sys.stderr)
        return 2
    threads = set_torch_threads(settings.torch_threads)
    mode = "server mode" if settings.enabled else "open mode (no limits)"
    print(f"kvviz: {mode}; torch threads: {threads}; models allowed: "
          f"{', '.join(settings.models) if settings.enabled else 'any'}", flush=True)

    from kvviz.ui.engine_import import import_engine
    from kvviz.ui.resources import preload

    import_engine()
    frozen = freeze_imports()
    print(f"kvviz: {frozen:,} objects from imports left out of garbage collection", flush=True)
    if settings.preload:
        preload(settings.preload, log=lambda line: print(line, flush=True))
    upload_mib = math.ceil(settings.upload_max_bytes / 2**20) if settings.enabled else None

    from streamlit.web import cli

    sys.argv = streamlit_arguments(list(sys.argv[1:] if argv is None else argv), upload_mib)
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
