"""The splits a run recorded, for the cells that join it later (``medad run --extend``, ``--resume``).

A run folder records each dataset/subset's split in every job that ran on it: ``split.csv`` (which image went to
which part, with its label; merged into the run's ``splits.csv``), and in ``job.json`` the split's ``fingerprint``
(a hash of those rows and of the dataset's identity: its files' paths, sizes and modification times and medad's
records of them) and, since medad records it, ``images_digest`` (the images' ids, labels and file bytes).

Before new cells run on a subset that has finished jobs, :func:`check_recorded_splits` splits it as this medad
does and compares:

1. The same fingerprint: the same split; nothing to do.
2. The files unchanged: today's ``images_digest`` is the recorded one; for a run written before digests were
   recorded, the recorded rows with today's identity (or the identity as earlier medad computed it,
   ``Dataset.identities``) give the recorded fingerprint (the same names, sizes and modification times), or else
   the download holds exactly the run's images by name and label (all that ``splits.csv`` can show; the note says
   so). Then the split rule changed (near-duplicate grouping, the assignment of groups), not the data: the new
   cells get the recorded split (the jobs carry it, :attr:`~medad.benchmark.jobs.Job.recorded_split`), so every
   cell of the run is tested on the same images.
3. Otherwise the files changed, and the new cells are refused (:class:`~medad.benchmark.preflight.Problem`): the
   message says what changed (images gone, new or relabelled, or other bytes) and names the medad version and
   commit that wrote the run, as it does when the rule changed but the dataset cannot take a recorded split.

Only subsets with cells still to run are checked (splitting a large download takes a while).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

import medad
from medad.benchmark.config import DatasetEntry, RunConfig
from medad.benchmark.jobs import Job
from medad.benchmark.preflight import Problem
from medad.benchmark.resources import git_commit
from medad.benchmark.run_folder import RunFolder
from medad.datasets.base import Dataset, DatasetError
from medad.datasets.files import FileDataset
from medad.datasets.splits import split_fingerprint
from medad.registry import DATASETS

log = logging.getLogger(__name__)


def medad_text(version: object, commit: object) -> str:
    """"medad 0.2.0 (commit 998ed29614ac)": a version and the first 12 digits of its commit (``+dirty`` kept)."""
    commit = str(commit or "unknown")
    short = commit if commit == "unknown" else commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
    return f"medad {version or '?'} (commit {short})"


def this_medad() -> str:
    """The medad running now, as :func:`medad_text` names it."""
    return medad_text(medad.__version__, git_commit(Path(medad.__file__).parent))


def run_writers(manifest: dict[str, Any]) -> str:
    """The medad that wrote a run (its manifest's version and commit), and any other that resumed or extended it."""
    first = medad_text((manifest.get("versions") or {}).get("medad"), manifest.get("git_commit"))
    later = [medad_text(s.get("medad"), s.get("git_commit")) for s in manifest.get("sessions") or []
             if isinstance(s, dict) and s.get("medad")]
    others = [text for text in dict.fromkeys(later) if text != first]
    return first + (f", extended or resumed by {', '.join(others)}" if others else "")


@dataclass
class TodaysSplit:
    """How this medad splits one dataset/subset: each sample's (part, label), the dataset's identities (as computed
    now, then as earlier medad did), the images' digest (empty where the dataset has none) and whether the dataset
    can take a recorded split."""

    rows: dict[str, tuple[str, int]]
    identities: list[str]
    digest: str
    takes_recorded: bool

    @property
    def fingerprint(self) -> str:
        return split_fingerprint(list(self.rows), [part for part, _ in self.rows.values()], self.identities[0])


def dataset_for(entry: DatasetEntry, config: RunConfig, data_root: str | None) -> Dataset:
    """``entry``'s dataset adapter as a job builds it (its input size does not change the split)."""
    root = entry.root or (f"{data_root}/{entry.name}" if data_root else None)
    return DATASETS.get(entry.name)(root=Path(root) if root else None, image_size=config.image_size,
                                    channels=config.channels, **entry.params)


def todays_split(entry: DatasetEntry, subset: str, config: RunConfig, data_root: str | None) -> TodaysSplit:
    """How this medad splits ``entry``'s ``subset`` (as a job does)."""
    dataset = dataset_for(entry, config, data_root)
    takes_recorded = type(dataset).use_recorded_split is not Dataset.use_recorded_split
    if isinstance(dataset, FileDataset):
        split = dataset.split(subset)
        rows = {r.id: (part, int(r.label)) for r, part in zip(split.chosen, split.parts)}
        return TodaysSplit(rows, dataset.identities(subset), str(split.info.get("images_digest", "")), takes_recorded)
    rows = {sample: (part, int(label)) for sample, part, label in dataset.load(subset).split_rows()}
    return TodaysSplit(rows, dataset.identities(subset), "", takes_recorded)


@dataclass
class RecordedUnit:
    """What a run recorded of one dataset/subset's split: its jobs' fingerprints and image digests, and the rows of
    their ``split.csv`` (sample id -> (part, label))."""

    fingerprints: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)
    rows: dict[str, tuple[str, int]] = field(default_factory=dict)

    def fingerprint_with(self, identity: str) -> str:
        return split_fingerprint(list(self.rows), [part for part, _ in self.rows.values()], identity)


def recorded_units(run_folder: RunFolder) -> dict[str, RecordedUnit]:
    """``dataset/subset`` -> its :class:`RecordedUnit`, from the run's finished jobs (their folders: the merged
    ``splits.csv`` of an earlier medad may have read numeric ids as numbers)."""
    units: dict[str, RecordedUnit] = {}
    for record in run_folder.records():
        split = record.get("split")
        if record.get("status") != "done" or not isinstance(split, dict):
            continue
        unit = units.setdefault(f"{record['dataset']}/{record['subset']}", RecordedUnit())
        if split.get("fingerprint"):
            unit.fingerprints.add(str(split["fingerprint"]))
        if split.get("images_digest"):
            unit.digests.add(str(split["images_digest"]))
    rows = run_folder.tables_from_jobs(("splits",))["splits"]
    for (dataset, subset), group in rows.groupby(["dataset", "subset"]) if not rows.empty else ():
        if f"{dataset}/{subset}" in units:
            labels = pd.to_numeric(group["label"], errors="coerce").fillna(-1).astype(int)
            units[f"{dataset}/{subset}"].rows = dict(zip(group["sample_id"].astype(str),
                                                         zip(group["part"].astype(str), labels)))
    return units


def _example(ids: Iterable[str]) -> str:
    return next(iter(sorted(ids)), "")


def files_change(recorded: RecordedUnit, today: TodaysSplit) -> str:
    """What differs between the run's images and today's download, in words (empty when names and labels agree)."""
    gone, new = set(recorded.rows) - set(today.rows), set(today.rows) - set(recorded.rows)
    relabelled = {i for i in set(recorded.rows) & set(today.rows) if recorded.rows[i][1] != today.rows[i][1]}
    found = []
    if gone:
        found.append(f"{len(gone)} of the run's {len(recorded.rows)} images {_are(gone)} not in the download any more "
                     f"(e.g. {_example(gone)})")
    if new:
        found.append(f"{_images(new)} {_are(new)} new (e.g. {_example(new)})")
    if relabelled:
        found.append(f"{_images(relabelled)} {'has' if len(relabelled) == 1 else 'have'} another label "
                     f"(e.g. {_example(relabelled)})")
    return "; ".join(found)


def _images(ids: set[str]) -> str:
    return f"{len(ids)} image{'' if len(ids) == 1 else 's'}"


def _are(ids: set[str]) -> str:
    return "is" if len(ids) == 1 else "are"


@dataclass
class SplitCheck:
    """The outcome of :func:`check_recorded_splits`: the recorded splits the new cells take (``dataset/subset`` ->
    (sample id, part) pairs), the problems that refuse them, and notes saying what was found."""

    parts: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check_unit(unit: str, dataset: str, recorded: RecordedUnit, today: TodaysSplit, writers: str,
                check: SplitCheck) -> None:
    """Add to ``check`` what new cells of ``unit`` get: nothing (the same split), the recorded split, or a problem."""
    if today.fingerprint in recorded.fingerprints:
        return
    if not recorded.rows:
        check.problems.append(Problem(unit, f"the running {this_medad()} splits it otherwise than {writers}, which "
                                            "wrote the run, and the run's job folders hold no split.csv to reuse; "
                                            "start a new run"))
        return
    names = files_change(recorded, today)
    if recorded.digests:
        unchanged, basis = today.digest in recorded.digests, "the same image files, byte for byte, with the same labels"
        names = names or "the image files' contents differ (their digest is not the one the run recorded)"
    elif any(recorded.fingerprint_with(identity) in recorded.fingerprints for identity in today.identities):
        unchanged, basis = True, "the same files: names, sizes and modification times"
    else:
        unchanged = not names
        basis = ("the same images by name and label; the run predates medad's image digests, so their bytes could "
                 "not be compared")
    if not unchanged:
        check.problems.append(Problem(unit, f"the dataset's files changed since the run was written by {writers}: "
                                            f"{names}; new cells would be tested on other images than the run's. "
                                            "Restore the files the run used, or start a new run"))
        return
    moved = sum(1 for i, (part, _) in recorded.rows.items() if today.rows[i][0] != part)
    if not moved:
        return  # the same parts: only the identity moved (e.g. modification times)
    if not today.takes_recorded:
        check.problems.append(Problem(unit, f"its split rule changed since the run was written by {writers} (the files "
                                            f"are unchanged: {basis}; the running {this_medad()} would move {moved} "
                                            f"of {len(recorded.rows)} images to another part), and dataset "
                                            f"{dataset!r} cannot take the split the run recorded; start a new run"))
        return
    check.parts[unit] = tuple(sorted((i, part) for i, (part, _) in recorded.rows.items()))
    check.notes.append(f"{unit}: new cells use the split the run recorded (splits.csv). The files are unchanged "
                       f"({basis}), but the split rule changed since {writers} wrote the run: the running "
                       f"{this_medad()} would move {moved} of {len(recorded.rows)} images to another part")


def pending_units(run_folder: RunFolder, jobs: Iterable[Job]) -> set[str]:
    """The ``dataset/subset`` units of ``jobs`` that are not done in ``run_folder``."""
    done = run_folder.done_job_ids()
    return {f"{job.dataset}/{job.subset}" for job in jobs if job.job_id not in done}


def check_recorded_splits(run_folder: RunFolder, config: RunConfig, data_root: str | None,
                          units: set[str] | None = None) -> SplitCheck:
    """For each dataset/subset of ``config`` with finished jobs in ``run_folder`` (and in ``units``, when given):
    whether new cells can be tested on the run's images, and on which split (see the module docstring)."""
    recorded = recorded_units(run_folder)
    writers = run_writers(run_folder.read_manifest())
    check = SplitCheck()
    for entry in config.datasets:
        for subset in entry.subsets:
            unit = f"{entry.name}/{subset}"
            if unit not in recorded or (units is not None and unit not in units):
                continue
            try:
                today = todays_split(entry, subset, config, data_root)
            except (DatasetError, OSError, ValueError) as error:
                check.problems.append(Problem(unit, f"cannot rebuild its split: {error}"))
                continue
            _check_unit(unit, entry.name, recorded[unit], today, writers, check)
    return check


def with_recorded_splits(jobs: list[Job], parts: dict[str, tuple[tuple[str, str], ...]]) -> list[Job]:
    """``jobs``, each of a unit in ``parts`` carrying that recorded split."""
    return [replace(job, recorded_split=parts[f"{job.dataset}/{job.subset}"])
            if f"{job.dataset}/{job.subset}" in parts else job for job in jobs]
