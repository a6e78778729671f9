"""What a report says of a run without control rows: its shortcut check was not run, and the command that adds it.

The shortcut check compares every detector with structure-blind control detectors (``intensity``, ``histogram``)
on the same test images. A run written before the controls existed, or with a config that leaves them out, has no
such rows; ``medad run --extend RUN --detectors intensity,histogram`` adds them on the run's own datasets and
recorded splits without training anything else again, and ``medad report RUN`` then shows the check.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from pathlib import Path

from medad.evaluation.shortcut import control_labels
from medad.reporting.run_data import RunData

CONTROL_DETECTORS = ("intensity", "histogram")


def extend_command(run_path: str | Path, controls: Collection[str] = CONTROL_DETECTORS) -> str:
    """``medad run --extend RUN --detectors intensity,histogram``, the run's path quoted for a shell where needed."""
    return f"medad run --extend {shlex.quote(str(run_path))} --detectors {','.join(controls)}"


def has_control_rows(data: RunData, controls: Collection[str] = CONTROL_DETECTORS) -> bool:
    """Whether the run has a control detector's rows: metrics tagged ``role: control`` (any control, under any
    label), or a finished job of one of ``controls`` (its registry name in ``jobs.csv``)."""
    if control_labels(data.metrics):
        return True
    jobs = data.jobs
    if jobs.empty or "detector_name" not in jobs:
        return False
    return bool((jobs["detector_name"].astype(str).isin(set(controls)) & (jobs["status"] == "done")).any())


def shortcut_check_not_run(data: RunData, controls: Collection[str] = CONTROL_DETECTORS) -> str | None:
    """None when the run has control rows; else a notice that the shortcut check was not run, with the exact
    ``--extend`` command for each run folder the report reads and the ``medad report`` that shows the check after."""
    if has_control_rows(data, controls):
        return None
    paths = list(data.sources.values()) or [data.path]
    commands = "; ".join(extend_command(path, controls) for path in paths)
    report = f"medad report {' '.join(shlex.quote(str(path)) for path in paths)}"
    return (f"The shortcut check was not run: this run has no rows of the control detectors ({', '.join(controls)}), "
            "so nothing here says whether a detector does better than image brightness or grey-level statistics "
            f"alone. Add the controls without training anything else again (the run's own datasets and recorded "
            f"splits): {commands}; then {report} shows the check.")
