"""Run one job: load the subset, fit the detector (or take the fit its unit shares: :mod:`.fit_sharing`), score
validation and test images, compute metrics.

Whatever happens, the job ends with a folder in ``jobs/<job-id>/``: ``done`` with its tables, or
``failed`` with the error and traceback. The detector's ``fit`` receives the training normals
without labels and the validation normals; it never sees the test set.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medad.atomic_files import make_dirs
from medad.benchmark.acceleration import autocast, precision_tags, resolve_memory_format
from medad.benchmark.config import hyperparameters
from medad.benchmark.device_images import place_images
from medad.benchmark.diagnostics import TestCurve, diagnostic_tags
from medad.benchmark.examples import EXAMPLES_FILE, examples_npz
from medad.benchmark.fit_sharing import FitUnit, SharedFit, as_unit, fit_id, training_fingerprint
from medad.benchmark.jobs import Job
from medad.benchmark.numerics import configure_numerics, deterministic_tags
from medad.benchmark.resources import PeakMemory, resolve_device, seed_everything
from medad.benchmark.run_folder import RunFolder, now
from medad.datasets.base import DatasetError, ImageSet, Subset
from medad.datasets.splits import split_fingerprint
from medad.detectors.base import Detector, TrainLog, score_map_or_none
from medad.detectors.scoring import scores_in_random_order
from medad.evaluation.metrics import MetricRow, image_metrics, pixel_metrics, screening_metrics, threshold_val_q95
from medad.evaluation.statistics import bootstrap_intervals
from medad.registry import DATASETS, DETECTORS

_SUBSET_CACHE: OrderedDict[tuple, Subset] = OrderedDict()
_SUBSET_CACHE_SIZE = 2


def dataset_of(job: Job):
    """The job's dataset adapter, built as its config entry says (with the run's recorded split of its subset when
    the job carries one: :attr:`Job.recorded_split`)."""
    cls = DATASETS.get(job.dataset)
    if cls.needs_download and job.dataset_root is None:
        raise DatasetError(f"dataset {job.dataset!r} needs its files: pass --data-root DIR (or set MEDAD_DATA) "
                           f"with the download unpacked in DIR/{job.dataset}/, or give 'root' in the config")
    dataset = cls(root=Path(job.dataset_root) if job.dataset_root else None, image_size=job.image_size,
                  channels=job.channels, **job.dataset_params)
    if job.recorded_split:
        dataset.use_recorded_split(job.subset, dict(job.recorded_split))
    return dataset


def dataset_identity(job: Job) -> str:
    """What the job's images are (the source files' fingerprint, a generator's parameters): see ``Dataset.identity``."""
    return dataset_of(job).identity(job.subset)


def load_subset(job: Job) -> Subset:
    """The job's subset, kept in a small in-process cache so detectors of one subset share one load."""
    key = (job.dataset, job.subset, job.image_size, job.channels, job.dataset_root, repr(sorted(job.dataset_params.items())),
           job.recorded_split)
    if key in _SUBSET_CACHE:
        _SUBSET_CACHE.move_to_end(key)
        return _SUBSET_CACHE[key]
    subset = dataset_of(job).load(job.subset)
    _SUBSET_CACHE[key] = subset
    while len(_SUBSET_CACHE) > _SUBSET_CACHE_SIZE:
        _SUBSET_CACHE.popitem(last=False)
    return subset


def score_in_batches(detector: Detector, images: ImageSet, batch_size: int, label: str = "", seed: int = 0) -> np.ndarray:
    """Image scores ``(N,)`` as float64, scored ``batch_size`` images at a time in a seeded random order (returned in
    the images' own order); ``label`` names the detector in errors."""
    name = label or detector.name or type(detector).__name__
    try:
        scores = scores_in_random_order(detector.score, images, batch_size, torch.Generator().manual_seed(seed))
    except ValueError as error:
        raise ValueError(f"detector {name!r} returned {error}") from None
    return scores.double().numpy()


def maps_in_batches(detector: Detector, images: ImageSet, batch_size: int) -> np.ndarray | None:
    """Pixel maps ``(N, H, W)`` at the image size (resized bilinearly if the detector's differ), or None."""
    parts = []
    for batch in images.batches(batch_size):
        maps = score_map_or_none(detector, batch)
        if maps is None:
            return None
        maps = maps.detach().float().cpu()
        if maps.shape[-2:] != batch.shape[-2:]:
            maps = F.interpolate(maps[:, None], size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        parts.append(maps)
    return torch.cat(parts).numpy()


def _metric_frame(job: Job, run_id: str, rows: list[MetricRow], tags: dict[str, str],
                  intervals: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """The job's metrics.csv; ``intervals`` gives bootstrap (ci_low, ci_high) by metric name."""
    intervals = intervals or {}
    return pd.DataFrame([
        {"run_id": run_id, **job.keys(), **tags, "metric": r.metric, "value": r.value,
         "ci_low": intervals.get(r.metric, (np.nan, np.nan))[0], "ci_high": intervals.get(r.metric, (np.nan, np.nan))[1],
         "threshold_policy": r.threshold_policy, "oracle": r.oracle, "note": r.note}
        for r in rows
    ])


def _score_frame(job: Job, run_id: str, part: str, images: ImageSet, scores: np.ndarray) -> pd.DataFrame:
    """The scores.csv rows of one part, with each image's mean intensity (of the images scored: the shortcut check)."""
    return pd.DataFrame({"run_id": run_id, **job.keys(), "part": part, "sample_id": images.ids,
                         "label": images.labels, "score": scores, "mean_intensity": images.mean_intensities()})


def check_needs(detector_cls: type[Detector], subset: Subset, dataset: str) -> None:
    """Raise a clear DatasetError when the subset lacks something the detector declares it needs."""
    provided = {"roi_masks": subset.train.roi_masks is not None, "anomaly_pool": subset.anomaly_pool is not None}
    for need in detector_cls.needs:
        if not provided.get(need, False):
            raise DatasetError(f"detector {detector_cls.name!r} needs {need.replace('_', ' ')} "
                               f"(declared in its 'needs'); dataset {dataset!r} subset {subset.name!r} provides none")


def fit_detector(detector: Detector, subset: Subset, log: TrainLog) -> None:
    """Fit on the training normals with their labels removed and the validation normals; the test set stays out.

    A semi-supervised detector also gets the labelled anomaly pool (disjoint from the test set). A
    detector whose ``sees_test_set`` is true (an explicit, tagged reference-protocol quirk) gets ``test=``.
    """
    extra = {"anomaly_pool": subset.anomaly_pool} if detector.supervision == "semi-supervised" else {}
    if getattr(detector, "sees_test_set", False):  # a marked reference-protocol quirk (e.g. GANomaly's best-epoch-on-test)
        extra["test"] = subset.test
    detector.fit(subset.train.without_labels(), subset.val, log, **extra)
    log.flush()  # a NaN/inf loss the fit logged fails the job here, before anything scores with the weights


def setting_deviations(cls: type[Detector], params: dict[str, Any]) -> list[str]:
    """The detector's :attr:`~Detector.paper_settings` that ``params`` (the config's) change, in words."""
    defaults = {name: parameter.default for name, parameter in hyperparameters(cls).items()}
    return [f"{name} {params[name]:g} (paper: {defaults[name]:g})" if isinstance(params[name], float | int)
            and isinstance(defaults.get(name), float | int) and not isinstance(params[name], bool)
            else f"{name} {params[name]} (paper: {defaults.get(name)})"
            for name in cls.paper_settings if name in params and params[name] != defaults.get(name)]


def detector_tags(detector: Detector, params: dict[str, Any] | None = None) -> dict[str, str]:
    """Columns that say what kind of result a row is (supervision, weights, protocol tags, deviations)."""
    deviations = setting_deviations(type(detector), params or {}) + detector.paper_deviations()
    paper_size = type(detector).paper_image_size
    if paper_size and detector.image_size != paper_size:
        deviations.append(f"image_size {detector.image_size} (paper: {paper_size})")
    return {"supervision": detector.supervision, "weights": detector.weights, **detector.extra_tags(),
            **({"deviations": "; ".join(deviations)} if deviations else {})}


class PhaseTimes(dict):
    """Wall seconds per phase of a job (``load_s``, ``train_s``, ``score_s``, ``maps_s``, ``metrics_s``,
    ``bootstrap_s``, ``examples_s``): ``with times.phase("score"): ...`` adds to ``score_s``."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self[f"{name}_s"] = self.get(f"{name}_s", 0.0) + time.perf_counter() - started


def _score_subset(detector: Detector, subset: Subset, job: Job, times: PhaseTimes
                  ) -> tuple[list[MetricRow], dict[str, tuple[float, float]], np.ndarray | None, np.ndarray]:
    """Score the test (and validation, pool) images; image and pixel metric rows, bootstrap intervals, scores."""
    def scores_of(images: ImageSet | None) -> np.ndarray | None:
        if images is None:
            return None
        with times.phase("score"):
            return score_in_batches(detector, images, job.score_batch_size, job.detector, job.seed)

    test_scores, val_scores = scores_of(subset.test), scores_of(subset.val)
    # the high-sensitivity screening filter (screen_s98) is calibrated on the labelled anomaly pool
    pool_scores = scores_of(subset.anomaly_pool)
    in_sample = ("threshold from the training normals' own scores (in-sample: no validation normals were carved "
                 "apart, val_source: train)") if subset.val_in_sample else ""
    with times.phase("metrics"):
        rows = image_metrics(subset.test.labels, test_scores, val_scores, val_note=in_sample)
        rows += screening_metrics(subset.test.labels, test_scores, pool_scores,
                                  in_sample=detector.supervision == "semi-supervised")
    with times.phase("bootstrap"):  # 95% stratified bootstrap intervals of ROC/PR AUC, 1000 resamples, job-seeded
        intervals = bootstrap_intervals(subset.test.labels, test_scores, seed=job.seed)
    if subset.test.masks is not None and subset.test.mask_known.any():
        # anomalies the publisher did not outline have unknown masks: only known ones are scored
        masked = subset.test.subset(np.flatnonzero(subset.test.mask_known))
        with times.phase("maps"):
            maps = maps_in_batches(detector, masked, job.score_batch_size)
            # the normal validation images' maps fix the honest pixel threshold of Dice
            val_maps = (maps_in_batches(detector, subset.val, job.score_batch_size)
                        if maps is not None and subset.val is not None else None)
        if maps is not None:
            with times.phase("metrics"):
                rows += pixel_metrics(masked.masks.numpy(), maps, n_test=len(subset.test), val_maps=val_maps)
    return rows, intervals, val_scores, test_scores


class JobLog:
    """A job's own log (``jobs/<job-id>/log.txt``): lines with a time stamp, appended to ``live`` as they come
    (a file beside the job folders that ``tail -f`` can follow) and kept for the job folder."""

    def __init__(self, live: Path | None = None) -> None:
        self.lines: list[str] = []
        self.live = live
        self.started = time.perf_counter()

    def __call__(self, line: str) -> None:
        text = f"[{time.perf_counter() - self.started:8.1f} s] {line}"
        self.lines.append(text)
        if self.live is not None:
            try:
                with open(self.live, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError:  # a live log is a convenience: the job goes on without it
                self.live = None

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")

    def close(self) -> None:
        if self.live is not None:
            self.live.unlink(missing_ok=True)


def execute(job: Job, run_id: str, progress: bool = False, job_log: JobLog | None = None,
            shared: SharedFit | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, bytes]]:
    """Run ``job``; return its timings, tables and files. Raises on any failure. ``shared``: the fit of the job's
    unit (:mod:`medad.benchmark.fit_sharing`), trained here if no job of the unit has trained it yet."""
    job_log = job_log or JobLog()
    times = PhaseTimes()
    device = resolve_device(job.device)
    configure_numerics(job.precision, job.deterministic, device)  # process-wide flags: set for every job, before any op
    seed_everything(job.seed)
    job_log(f"{job.job_id}: {job.detector} ({job.detector_name}) on {job.dataset}/{job.subset}, seed {job.seed}, "
            f"{job.image_size} px x{job.channels}, {device} ({torch.get_num_threads()} threads), {job.precision}"
            f"{', deterministic' if job.deterministic else ''}, {job.memory_format} memory format")
    with times.phase("load"):
        subset = load_subset(job)
    job_log(f"data: {len(subset.train)} training normals, {len(subset.val) if subset.val is not None else 0} "
            f"validation, {len(subset.test)} test ({int(subset.test.labels.sum())} anomalous)")
    cls = DETECTORS.get(job.detector_name)
    check_needs(cls, subset, job.dataset)
    subset, where = place_images(subset, device)
    job_log(where)
    log = TrainLog(progress=progress, description=f"{job.detector} epochs", sink=job_log, log_every=job.log_every)
    curve: TestCurve | None = None

    def train() -> Detector:
        nonlocal curve
        detector = cls(image_size=job.image_size, channels=job.channels, device=str(device), seed=job.seed,
                       **job.detector_params)
        detector.use_memory_format(resolve_memory_format(job.memory_format, device))
        if job.test_curve:  # the test-set diagnostic: scores the test set after each epoch, leaves the fit untouched
            curve = TestCurve(detector, subset.test, log, batch_size=job.score_batch_size, seed=job.seed, report=job_log)
            log.epoch_end = curve
        with times.phase("train"), autocast(device, job.precision):
            fit_detector(detector, subset, log)
        job_log(f"fit: {times['train_s']:.1f} s")
        return detector

    identity = dataset_identity(job)
    shared = shared or SharedFit(fit_id(job, share=False))
    detector = shared.detector_for(job, training_fingerprint(subset, identity), train, job_log)
    losses = shared.losses_for(job, log.rows)  # its own, or the shared fit's (kept now, whatever the scoring does)

    with autocast(device, job.precision):
        rows, intervals, val_scores, test_scores = _score_subset(detector, subset, job, times)
    auc = next((r.value for r in rows if r.metric == "roc_auc"), float("nan"))
    job_log(f"scored: {times['score_s']:.1f} s (maps {times.get('maps_s', 0.0):.1f} s), ROC AUC {auc:.4f}")
    timings: dict[str, Any] = times

    tags = {**detector_tags(detector, job.detector_params), **precision_tags(job.precision),
            **deterministic_tags(job.deterministic), **diagnostic_tags(job.test_curve)}
    if curve is not None and curve.error:
        timings["test_curve_error"] = curve.error
    split_rows = subset.split_rows()
    timings["split"] = {**subset.split_info, "fingerprint": split_fingerprint(
        [i for i, _, _ in split_rows], [part for _, part, _ in split_rows], identity)}
    scores = [_score_frame(job, run_id, "test", subset.test, test_scores)]
    if val_scores is not None:
        scores.append(_score_frame(job, run_id, "val", subset.val, val_scores))
    tables = {
        "metrics": _metric_frame(job, run_id, rows, tags, intervals),
        "scores": pd.concat(scores, ignore_index=True),
        # a job that scored with a shared fit has that fit's losses (each row's fit_by, set in compute_job, says so)
        "history": pd.DataFrame([{"run_id": run_id, **job.keys(), "epoch": e, "step": s, "loss_name": n, "value": v}
                                 for e, s, n, v in losses + (curve.history_rows() if curve else [])]),
        "splits": pd.DataFrame([{"run_id": run_id, "dataset": job.dataset, "subset": job.subset, "sample_id": i,
                                 "part": part, "label": label} for i, part, label in split_rows]),
    }
    files: dict[str, bytes] = {}
    threshold = threshold_val_q95(val_scores) if val_scores is not None and len(val_scores) else float("nan")
    try:  # a few test images with reconstructions/maps for the report's figures; never fails a finished job
        with times.phase("examples"):
            examples = examples_npz(detector, subset.test, test_scores, threshold)
    except Exception as error:
        examples, timings["examples_error"] = None, f"{type(error).__name__}: {error}"
    if examples is not None:
        files[EXAMPLES_FILE] = examples
    if job.save_checkpoints:  # in memory: nothing is written outside the run folder
        checkpoint = io.BytesIO()
        torch.save(detector.state_dict(), checkpoint)
        files["model.pt"] = checkpoint.getvalue()
    timings["device"] = str(device)
    timings["tags"] = tags
    return timings, tables, files


@dataclass
class JobOutput:
    """What a job produces: its record (status, timings, errors), its tables, and its files (name -> bytes:
    examples, checkpoints), all in memory so that the output can travel from a remote worker as it is."""

    record: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def job_record(job: Job, run_id: str, worker: str) -> dict[str, Any]:
    """A job's record before it runs: its keys, where it runs, and status ``failed`` until it succeeds."""
    return {
        "run_id": run_id, "job_id": job.job_id, **job.keys(), "detector_name": job.detector_name,
        "status": "failed", "error": "", "worker": worker, "started": now(),
        "params": job.detector_params, "dataset_params": job.dataset_params,
    }


def lost_job_output(job: Job, run_id: str, error: str, worker: str) -> JobOutput:
    """The output of a job whose worker was lost (died, or its node did) before it returned: ``failed``, with
    ``error``."""
    return JobOutput({**job_record(job, run_id, worker), "error": error, "started": "", "finished": now()})


def write_lost_job(run_folder: RunFolder, job: Job, error: str, worker: str) -> dict[str, Any]:
    """Record a job whose worker was lost (:func:`lost_job_output`) in ``run_folder``; return its record."""
    return write_output(run_folder, lost_job_output(job, run_folder.run_id, error, worker))


def compute_job(job: Job, run_id: str, worker: str = "main", progress: bool = False,
                live_log: Path | None = None, shared: SharedFit | None = None,
                placement: dict[str, Any] | None = None) -> JobOutput:
    """Run ``job`` and return its output (status done or failed; its log as ``log.txt``); writes nothing to the run
    folder but the ``live_log`` file, when given, as the job goes (removed at the end). ``shared``: its unit's fit.
    The record names the torch ``threads`` the job ran on and, from the executor's ``placement``, the
    ``workers_per_gpu`` sharing its GPU."""
    shared = shared or SharedFit(fit_id(job, share=False))
    record = job_record(job, run_id, f"{socket.gethostname()}:{worker}:{os.getpid()}")
    record["threads"] = torch.get_num_threads()
    if placement and placement.get("workers_per_gpu") is not None:
        record["workers_per_gpu"] = placement["workers_per_gpu"]
    job_log = JobLog(live_log)
    tables: dict[str, pd.DataFrame] = {}
    files: dict[str, bytes] = {}
    started = time.perf_counter()
    try:
        device = resolve_device(job.device)
    except RuntimeError:  # execute() raises the same error again, inside the recorded try
        device = torch.device("cpu")
    with PeakMemory(device) as peak:
        try:
            timings, tables, files = execute(job, run_id, progress, job_log, shared)
            record.update(timings)
            record["status"] = "done"
        except (Exception, SystemExit) as error:  # recorded, and the matrix goes on (a plugin's sys.exit() too)
            record["error"] = f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc()
            record["device"] = str(device)
            job_log(f"failed: {record['error']}")
    record.update(wall_s=time.perf_counter() - started, peak_rss_mb=peak.rss_mb,
                  peak_gpu_mb=peak.gpu_mb, finished=now())
    record["fit_id"], record["fit_by"] = shared.used.get(job.job_id, (shared.fit_id, ""))
    if "metrics" in tables:
        tables["metrics"]["fit_id"] = record["fit_id"]
    if "history" in tables:  # whose training the losses are: this job's own id, or the job that trained the fit
        tables["history"]["fit_by"] = record["fit_by"]
    job_log(f"{record['status']} in {record['wall_s']:.1f} s, peak memory {peak.rss_mb:.0f} MB")
    files = {**files, "log.txt": job_log.text()}
    job_log.close()
    return JobOutput(record, tables, files)


def write_output(run_folder: RunFolder, output: JobOutput) -> dict[str, Any]:
    """Write a job's output as its folder in ``run_folder``; return its record."""
    run_folder.write_job(output.record["job_id"], output.record, output.tables, output.files)
    return output.record


def live_log_path(run_folder: RunFolder, job_id: str) -> Path:
    """Where a running job's log grows (``jobs/.<job-id>.log``), until it ends as ``jobs/<job-id>/log.txt``."""
    return run_folder.jobs_dir / f".{job_id}.log"


def compute_unit(unit: Job | FitUnit, run_id: str, worker: str = "main", progress: bool = False,
                 live_log: Callable[[str], Path | None] = lambda job_id: None,
                 stop: Callable[[], bool] | None = None, placement: dict[str, Any] | None = None) -> Iterator[JobOutput]:
    """Run the jobs of ``unit`` in turn, the first training the fit and the others scoring with it; yield each job's
    output as it ends (``live_log(job_id)``: where its log grows). ``stop()`` true: start no further job.
    ``placement``: the executor's (see :func:`compute_job`)."""
    unit = as_unit(unit)
    shared = SharedFit(unit.fit_id, uses=len(unit.jobs))
    for job in unit.jobs:
        if stop is not None and stop():
            return
        yield compute_job(job, run_id, worker, progress, live_log=live_log(job.job_id), shared=shared,
                          placement=placement)


def run_unit(unit: Job | FitUnit, run_folder: RunFolder, worker: str = "main", progress: bool = False,
             stop: Callable[[], bool] | None = None, placement: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Run the jobs of ``unit`` (:func:`compute_unit`), writing each job's folder as it ends; yield its record."""
    make_dirs(run_folder.jobs_dir)

    def live(job_id: str) -> Path:
        path = live_log_path(run_folder, job_id)
        path.unlink(missing_ok=True)
        return path

    for output in compute_unit(unit, run_folder.run_id, worker, progress, live, stop, placement):
        yield write_output(run_folder, output)


def run_job(job: Job, run_folder: RunFolder, worker: str = "main", progress: bool = False,
            placement: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``job`` and write its folder; return the job record (status done or failed)."""
    return next(run_unit(job, run_folder, worker, progress, placement=placement))
