"""``medad report``: turn a run folder's CSVs into ``reports/<run-id>/index.html`` (+ figures/ and tables/).

The page opens from disk without a server: figures are PNG files beside it (2x resolution, with
the SVG linked), tables sort with a few lines of inline JavaScript, nothing is loaded from the
network. Every string from a CSV, a manifest or a file name goes through Jinja2's autoescaping.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from medad.atomic_files import write_text_atomic
from medad.reporting import figures as fig
from medad.reporting import tables as tab
from medad.reporting import threshold_reference as ref
from medad.reporting.paper_results import compare, load_paper_results
from medad.reporting.run_data import RunData, load_run
from medad.reporting.shortcut_section import build_shortcut_section

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class UnitSection:
    """One dataset/subset: its curves, tables, tests, training curves and examples."""

    name: str
    anchor: str
    figures: list[fig.Figure] = field(default_factory=list)
    tables: list[tab.Table] = field(default_factory=list)
    examples: list[fig.Figure] = field(default_factory=list)
    details: list[tab.Table] = field(default_factory=list)   # shown collapsed


def _sort_key(value: Any) -> str | None:
    """The data-sort attribute of a cell: numbers as repr, NaN/None as absent."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["sort_key"] = _sort_key
    return env


def _examples(data: RunData, unit: str, folder: Path) -> list[fig.Figure]:
    """Example figures of the first seed of every detector of ``unit`` that saved examples."""
    found = []
    jobs = data.unit_rows(data.jobs, unit)
    for detector in data.detectors:
        seeds = sorted(jobs[(jobs["detector"] == detector) & (jobs["status"] == "done")]["seed"].astype(int))
        if seeds:
            figure = fig.examples_figure(data, unit, detector, seeds[0], folder)
            if figure is not None:
                found.append(figure)
    return found


def policy_legend(data: RunData) -> dict[str, str]:
    """What each threshold policy of the run means (the known ones, then any other found in metrics.csv)."""
    legend = dict(tab.POLICY_TEXT)
    for policy, rows in data.metrics.groupby("threshold_policy"):
        if policy in legend or policy == "none":
            continue
        notes = sorted({str(n) for n in rows["note"].dropna() if str(n)})
        oracle = "ORACLE (chosen on test labels); " if bool(rows["oracle"].any()) else ""
        legend[str(policy)] = f"{policy}: {oracle}{notes[0] if notes else 'see metrics.csv'}"
    return legend


def build_sections(data: RunData, folder: Path, delong: Any) -> list[UnitSection]:
    sections = []
    for index, unit in enumerate(data.units):
        section = UnitSection(unit, f"unit-{index}")
        for figure in (fig.roc_pr_figure(data, unit, folder), fig.history_figure(data, unit, folder),
                       fig.test_curve_figure(data, unit, folder)):
            if figure is not None:
                section.figures.append(figure)
        section.tables.append(tab.study_table(data, "val_q95", [unit], f"table3-val_q95-{index}"))
        section.tables.append(tab.study_table(data, "best_f1", [unit], f"table3-best_f1-{index}"))
        delong_table = tab.delong_table(data, delong, unit)
        delong_table.id = f"delong-{index}"
        if delong_table.rows:
            section.tables.append(delong_table)
        section.examples = _examples(data, unit, folder)
        section.details.append(tab.all_metrics_table(data, unit, f"all-metrics-{index}"))
        sections.append(section)
    return sections


def build_report(run_dir: str | Path, reports_dir: str | Path = "reports", paper_files: list[Path] | None = None,
                 data: RunData | None = None) -> Path:
    """Write the report of ``run_dir`` (or of ``data`` already read from it) into ``reports_dir/<run-id>/``;
    return the path of index.html."""
    data = data if data is not None else load_run(run_dir)
    out = Path(reports_dir) / data.run_id
    figures_dir, tables_dir = out / "figures", out / "tables"
    for stale in (figures_dir, tables_dir):
        if stale.exists():
            shutil.rmtree(stale)
    delong = tab.delong_frame(data)
    tables_dir.mkdir(parents=True, exist_ok=True)
    delong.to_csv(tables_dir / "delong.csv", index=False)

    overview_figures = [f for f in (fig.heatmap_figure(tab.mean_matrix(data), figures_dir),
                                    fig.sens_spec_figure(data, figures_dir)) if f is not None]
    cd_figures, cd_notes = [], []
    for group in tab.rank_summaries(data):
        complete = group.complete
        if len(complete) >= 3 and complete.shape[1] >= 2:
            completeness = tab.completeness_text(group)
            note = f"{completeness[:1].upper()}{completeness[1:]}. {tab.friedman_text(group)}."
            figure = fig.cd_diagram(group.average, len(complete), figures_dir, group.name, group.friedman_p_value, note)
            if figure is not None:
                cd_figures.append(figure)
        else:
            cd_notes.append(f"{group.name}: no critical-difference diagram ({len(complete)} complete dataset/subset "
                            f"unit(s) and {complete.shape[1]} detector(s); it needs at least 3 and 2)")

    table3 = tab.study_table(data, "val_q95")
    table3.downloads = tab.export_study(data, "val_q95", tables_dir)
    table3_oracle = tab.study_table(data, "best_f1")
    table3_oracle.downloads = tab.export_study(data, "best_f1", tables_dir)
    comparison = tab.with_verdicts(data, compare(load_paper_results(paper_files), data.metrics))
    comparison.to_csv(tables_dir / "paper_vs_reproduced.csv", index=False)
    paper = tab.paper_table(data, comparison)
    paper.downloads = [("CSV", "tables/paper_vs_reproduced.csv")]

    failed = tab.failed_table(data)
    context = {
        "run_id": data.run_id,
        "notice": data.notice,
        "manifest": data.manifest,
        "manifest_json": json.dumps({k: v for k, v in data.manifest.items() if k != "config"}, indent=2, default=str),
        "config_json": json.dumps(data.manifest.get("config", {}), indent=2, default=str),
        "counts": data.jobs["status"].value_counts().to_dict() if not data.jobs.empty else {},
        "summary": tab.summary_table(data, delong),
        "shortcut": build_shortcut_section(data, figures_dir, tables_dir),
        "overview_figures": overview_figures,
        "ranks": tab.ranks_table(data),
        "cd_figures": cd_figures,
        "cd_notes": cd_notes,
        "table3": table3,
        "table3_oracle": table3_oracle,
        "sections": build_sections(data, figures_dir, delong),
        "paper": paper,
        "failed": failed,
        "jobs": tab.jobs_table(data),
        "policy_text": policy_legend(data),
        "tags": data.tags,
        "badges": {d: tab.tag_badges(t) for d, t in data.tags.items()},
        "reference_name": ref.REFERENCE_NAME,
        "reference_text": ref.REFERENCE_TEXT,
        "degenerate_rule": ref.RULE_TEXT,
    }
    html = environment().get_template("report.html.j2").render(**context)
    write_text_atomic(out / "index.html", html)
    return out / "index.html"
