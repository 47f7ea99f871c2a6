"""``deepalign view RUN_DIR``: every response and verdict of a run in Inspect AI's log viewer.

Writes the run's Inspect logs (when they are not current) and serves ``inspect view`` on
127.0.0.1 (``--port``); ``--bundle OUT`` writes the viewer and the logs as a static site
instead. RUN_DIR may be a directory holding several runs (a study's ``--out``). Needs the
``view`` extra: ``pip install 'deepalign[view]'``.
"""

from deepalign.reports.inspect_log import ViewOptions, view

OPTIONS = (ViewOptions,)
POSITIONAL = "run_dir"


def run(options: ViewOptions) -> int:
    return view(options)
