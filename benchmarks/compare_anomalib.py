#!/usr/bin/env python
"""medad against anomalib 2.x, the implementations people know, in one process (``pip install anomalib``: an optional
extra of this script only; nothing else in medad needs it).

    python benchmarks/compare_anomalib.py agreement --dataset head-ct --data-root /path/to/data --image-size 128
    python benchmarks/compare_anomalib.py agreement --dataset synthetic --detectors reverse-distillation --epochs 3
    python benchmarks/compare_anomalib.py speed --image-size 128 --batch-size 32 --channels 3 --steps 6 --rounds 3

**agreement**: PatchCore, PaDiM and Reverse Distillation fitted by medad and by anomalib's torch models on the same
images with the same backbone weights (random, drawn by medad from ``--seed``: these machines are offline; the
comparison needs only the same weights on both sides, not good ones), then the test images scored by both: the
Spearman correlation of the image scores, each side's ROC AUC, and the agreement of the anomaly maps (Pearson
correlation over every pixel of every test map, and the largest difference as a fraction of medad's map range). The
images are the dataset's own split as medad loads it (``--dataset head-ct``: the genuine download under
``--data-root``; ``synthetic``: Head-CT-size phantoms, 72 training normals and 120 test images), each fed to anomalib
exactly as medad's feature extractor sees it (three equal channels, ImageNet standardisation); anomalib's
pre-processing (resize, crop) is not run.

What is made equal on purpose, and where the two differ (the README lists the measured figures):

- the backbone: medad's random WideResNet-50-2 (or ResNet-18) state dict loaded into anomalib's timm extractor (the
  same module names);
- PatchCore: medad with ``target_dim: 0`` (anomalib does not reduce the concatenated layer2 + layer3 features to the
  paper's 1024 dimensions); each side selects its own 10 % coreset on its own random projection (anomalib: a sparse
  projection, medad: a dense 128-d one), so the banks differ; variant ``same bank`` scores anomalib with medad's
  memory bank to separate the search and the score from the selection, and ``anomalib vs anomalib reseeded``
  compares anomalib with itself after another draw of its coreset's projection and first centre (in that row
  "medad" stands for anomalib's first draw): how much the selection's randomness alone moves the scores;
- PaDiM: anomalib's randomly drawn channel indices replaced by medad's (the same random dimensionality reduction);
- Reverse Distillation: anomalib 2.7 builds the one-class embedding (OCE) at ResNet-50's width (64 per group,
  512-wide blocks) where the authors' code builds WideResNet-50-2's (128 per group, 1024-wide), as medad does: the
  script swaps in anomalib's own ``OCBE`` class at the authors' width; anomalib's bottleneck and decoder then start
  from medad's initial weights (its unused ``conv4``/``bn4`` aside) and both train on the same batches in the same
  order, medad computing the teacher's maps per batch as anomalib does (``teacher_cache_mb: 0``: the cache rounds
  differently in the last bits, and Adam makes that a different trajectory); anomalib's optimiser is its own
  (Adam, lr 0.005, betas (0.5, 0.99): its Lightning module's), so medad runs with ``beta2: 0.99`` (the paper: 0.999)
  and anomalib's ``add`` map mode (medad's ``sum``); variant ``same weights`` scores anomalib with medad's trained
  bottleneck and decoder;
- maps: both upsample bilinearly and smooth with sigma 4; anomalib's Gaussian kernel is 33 taps (4 sigma), medad's
  25 (3 sigma), both with mirrored borders.

**speed**: GANomaly's training step in anomalib and in medad, side by side: the same inputs, alternated in one
process (the first form of this script; ``speed`` may be left out). anomalib's side is its ``GanomalyModel`` torch
model with its ``GeneratorLoss`` and ``DiscriminatorLoss``, stepped as its Lightning module's ``training_step`` does
(one forward, the generator step with the graph kept, then the discriminator on the detached fake; Adam, lr 2e-4,
betas (0.5, 0.999)); Lightning's own overhead is left out, so the comparison favours anomalib if anything. medad's
side is :class:`medad.detectors.ganomaly`'s ``fit`` (every stamp of its ``TrainLog``), at the same width (64),
latent size (100) and batch size. Each round times ``--steps`` steps of each (the first step of each round is a
warm-up and not counted); rounds alternate which goes first, so that a clock that drifts during the run hurts both
alike. Prints the img/s of each round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import TimedTrainLog, phase_rates, random_images  # noqa: E402


def anomalib_rate(images: torch.Tensor, batch_size: int, steps: int) -> float:
    """anomalib's GANomaly: img/s over ``steps`` training steps after one warm-up step."""
    from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
    from anomalib.models.image.ganomaly.torch_model import GanomalyModel

    torch.manual_seed(0)
    model = GanomalyModel(input_size=tuple(images.shape[-2:]), num_input_channels=images.shape[1], n_features=64,
                          latent_vec_size=100, extra_layers=0, add_final_conv_layer=True).train()
    generator_loss, discriminator_loss = GeneratorLoss(wadv=1, wcon=50, wenc=1), DiscriminatorLoss()
    d_opt = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_opt = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        batch = images[(step * batch_size) % len(images):][:batch_size]
        padded, fake, latent_i, latent_o = model(batch)
        pred_real, _ = model.discriminator(padded)
        pred_fake, _ = model.discriminator(fake)
        g_loss = generator_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
        g_opt.zero_grad()
        g_loss.backward(retain_graph=True)
        g_opt.step()
        pred_fake, _ = model.discriminator(fake.detach())
        d_loss = discriminator_loss(pred_real, pred_fake)
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_loss.item(), d_loss.item()  # as Lightning's log_dict does: wait for the step
    return steps * batch_size / (time.perf_counter() - started)


def medad_rate(image_size: int, channels: int, batch_size: int, steps: int) -> float:
    """medad's GANomaly ``fit``: img/s between consecutive logged steps (the first step not counted)."""
    from medad.detectors.ganomaly import GanomalyDetector

    detector = GanomalyDetector(image_size=image_size, channels=channels, seed=0, epochs=1, batch_size=batch_size,
                                width=64, latent=100)
    log = TimedTrainLog()
    detector.fit(random_images((steps + 1) * batch_size, channels, image_size), None, log)
    (rate, _, _, _), = phase_rates(log.stamps, batch_size).values()
    return rate


# --- agreement ---------------------------------------------------------------------------------------------------
AGREEMENT_DETECTORS = ("patchcore", "padim", "reverse-distillation")
RD_BOTTLENECK_NAMES = {"mff_low.0.": "conv1.", "mff_low.1.": "bn1.", "mff_low.3.": "conv2.", "mff_low.4.": "bn2.",
                       "mff_mid.0.": "conv3.", "mff_mid.1.": "bn3.", "oce.": "bn_layer."}


@dataclasses.dataclass
class Agreement:
    """One comparison: the image scores' rank agreement, each side's ROC AUC, the maps' agreement, the seconds."""

    detector: str
    variant: str
    spearman: float
    auc_medad: float
    auc_anomalib: float
    map_pearson: float
    map_largest_difference: float  # the largest |medad - anomalib| over the maps, as a fraction of medad's map range
    seconds_medad: float
    seconds_anomalib: float

    @property
    def auc_difference(self) -> float:
        return abs(self.auc_medad - self.auc_anomalib)


def agreement(detector: str, variant: str, labels: np.ndarray, medad: tuple[torch.Tensor, torch.Tensor],
              anomalib: tuple[torch.Tensor, torch.Tensor], seconds: tuple[float, float]) -> Agreement:
    """Compare (image scores, maps) of both sides on the same test images."""
    from scipy.stats import pearsonr, spearmanr

    from medad.evaluation.metrics import roc_auc

    (scores, maps), (their_scores, their_maps) = medad, anomalib
    scores, their_scores = scores.double().numpy(), their_scores.double().reshape(-1).numpy()
    maps, their_maps = maps.double().reshape(-1).numpy(), their_maps.double().reshape(-1).numpy()
    spread = float(maps.max() - maps.min()) or 1.0
    return Agreement(detector, variant, float(spearmanr(scores, their_scores)[0]), roc_auc(labels, scores),
                     roc_auc(labels, their_scores), float(pearsonr(maps, their_maps)[0]),
                     float(np.abs(maps - their_maps).max()) / spread, *seconds)


def load_subset(args: argparse.Namespace):
    """The test subset both sides see: the dataset's own split as medad loads it, one channel, ``--image-size``."""
    from medad.registry import DATASETS

    if args.dataset == "synthetic":
        from medad.datasets.synthetic import SyntheticHeadCT

        return SyntheticHeadCT(image_size=args.image_size, n_train=72, n_val=8, n_test=120).load(args.subset or "subtle")
    if not args.data_root:
        raise SystemExit(f"--dataset {args.dataset} needs --data-root (the folder holding {args.dataset}/)")
    dataset = DATASETS.get(args.dataset)(root=Path(args.data_root) / args.dataset, image_size=args.image_size)
    return dataset.load(args.subset or dataset.subsets[0])


def copy_backbone(backbone: torch.nn.Module, extractor: torch.nn.Module) -> None:
    """Load medad's backbone weights into anomalib's ``TimmFeatureExtractor`` (timm keeps torchvision's names)."""
    target = extractor.feature_extractor
    own = backbone.state_dict()
    missing = [key for key in target.state_dict() if key not in own]
    if missing:
        raise RuntimeError(f"anomalib's extractor has weights medad's backbone lacks: {missing[:5]}")
    target.load_state_dict({key: own[key] for key in target.state_dict()})


def batched(function: Callable[[torch.Tensor], object], images: torch.Tensor, size: int = 16) -> list:
    return [function(images[start:start + size]) for start in range(0, len(images), size)]


def anomalib_scoring(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """anomalib's (pred_score, anomaly_map) for standardised inputs, in eval mode, batch by batch."""
    model.eval()
    with torch.no_grad():
        outputs = batched(model, inputs)
    return (torch.cat([o.pred_score.reshape(-1) for o in outputs]),
            torch.cat([o.anomaly_map.reshape(len(o.pred_score.reshape(-1)), *inputs.shape[-2:]) for o in outputs]))


def medad_scoring(detector, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.cat(batched(detector.score, images)), torch.cat(batched(detector.score_map, images)))


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """What ``function`` returns and the seconds it took."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def score_both(detector, model: torch.nn.Module, test: torch.Tensor, inputs: torch.Tensor):
    """(medad's scores and maps, anomalib's, medad's seconds, anomalib's seconds) on the same test images."""
    medad, medad_s = timed(lambda: medad_scoring(detector, test))
    theirs, theirs_s = timed(lambda: anomalib_scoring(model, inputs))
    return medad, theirs, medad_s, theirs_s


def compare_patchcore(subset, args: argparse.Namespace) -> list[Agreement]:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from medad.detectors.patchcore import PatchCoreDetector

    train, test = subset.train.without_labels(), subset.test.float_images()
    detector = PatchCoreDetector(image_size=args.image_size, channels=1, seed=args.seed, weights="random",
                                 target_dim=0, coreset_fraction=args.coreset_fraction)
    model = PatchcoreModel(layers=list(detector.layers), backbone="wide_resnet50_2", pre_trained=False,
                           num_neighbors=detector.num_neighbours)
    copy_backbone(detector.backbone, model.feature_extractor)
    inputs = detector.backbone.prepare(test)

    embeddings: list[torch.Tensor] = []

    def anomalib_fit() -> None:
        model.train()
        with torch.no_grad():
            batched(model, detector.backbone.prepare(train.float_images()))
        embeddings.extend(model.embedding_store)
        model.subsample_embedding(args.coreset_fraction)

    (_, fit_s), (_, their_fit_s) = timed(lambda: detector.fit(train)), timed(anomalib_fit)
    medad, theirs, medad_s, theirs_s = score_both(detector, model, test, inputs)
    rows = [agreement("patchcore", "own coreset", subset.test.labels, medad, theirs, (fit_s + medad_s, their_fit_s + theirs_s))]
    # how far anomalib is from itself when only its coreset's random draws change (projection, first centre)
    torch.manual_seed(args.seed + 1)
    model.embedding_store = list(embeddings)
    model.subsample_embedding(args.coreset_fraction)
    again = anomalib_scoring(model, inputs)
    rows.append(agreement("patchcore", "anomalib vs anomalib reseeded", subset.test.labels, theirs, again,
                          (their_fit_s + theirs_s, float("nan"))))
    model.memory_bank = detector.bank.clone()
    rows.append(agreement("patchcore", "same bank", subset.test.labels, medad, anomalib_scoring(model, inputs),
                          (medad_s, float("nan"))))
    return rows


def compare_padim(subset, args: argparse.Namespace) -> list[Agreement]:
    return [compare_padim_on(subset, args, backbone) for backbone in args.padim_backbones.split(",")]


def compare_padim_on(subset, args: argparse.Namespace, backbone: str) -> Agreement:
    from anomalib.models.image.padim.torch_model import PadimModel

    from medad.detectors.padim import PaDiMDetector

    train, test = subset.train.without_labels(), subset.test.float_images()
    detector = PaDiMDetector(image_size=args.image_size, channels=1, seed=args.seed, weights="random", backbone=backbone)
    model = PadimModel(backbone=backbone, layers=list(detector.layers), pre_trained=False, n_features=detector.n_features)
    copy_backbone(detector.backbone, model.feature_extractor)
    model.idx = detector.dims.clone()  # the same random dimensionality reduction

    def anomalib_fit() -> None:
        model.train()
        batched(model, detector.backbone.prepare(train.float_images()))
        model.fit()

    (_, fit_s), (_, their_fit_s) = timed(lambda: detector.fit(train)), timed(anomalib_fit)
    medad, theirs, medad_s, theirs_s = score_both(detector, model, test, detector.backbone.prepare(test))
    return agreement("padim", f"{backbone}, {detector.n_features} dims", subset.test.labels, medad, theirs,
                     (fit_s + medad_s, their_fit_s + theirs_s))


def compare_reverse_distillation(subset, args: argparse.Namespace) -> list[Agreement]:
    from anomalib.models.image.reverse_distillation.components.bottleneck import OCBE
    from anomalib.models.image.reverse_distillation.lightning_model import ReverseDistillation
    from torchvision.models.resnet import Bottleneck

    from medad.detectors.base import TrainLog
    from medad.detectors.reverse_distillation import ReverseDistillationDetector
    from medad.detectors.reverse_distillation.detector import TEACHER_LAYERS

    train, test = subset.train.without_labels(), subset.test.float_images()
    detector = ReverseDistillationDetector(image_size=args.image_size, channels=1, seed=args.seed, weights="random",
                                           epochs=args.epochs, beta2=0.99, map_combine="sum", teacher_cache_mb=0.0)
    size = (args.image_size, args.image_size)
    module = ReverseDistillation(backbone="wide_resnet50_2", layers=TEACHER_LAYERS, anomaly_map_mode="add",
                                 pre_trained=False, pre_processor=ReverseDistillation.configure_pre_processor(size),
                                 post_processor=False, evaluator=False, visualizer=False)
    model = module.model
    # anomalib 2.7 builds the one-class embedding at ResNet-50's width (64 per group: 512-wide blocks); the authors'
    # code, and medad, at WideResNet-50-2's (128: 1024-wide). anomalib's own OCBE class at the authors' width:
    model.bottleneck = OCBE(Bottleneck, 3, width_per_group=128)
    copy_backbone(detector.teacher, model.encoder)

    def load_student(source: ReverseDistillationDetector) -> None:
        bottleneck = {}
        for key, value in source.bottleneck.state_dict().items():
            prefix = next(p for p in RD_BOTTLENECK_NAMES if key.startswith(p))
            bottleneck[RD_BOTTLENECK_NAMES[prefix] + key[len(prefix):]] = value
        missing, unexpected = model.bottleneck.load_state_dict(bottleneck, strict=False)
        if unexpected or any(not key.startswith(("conv4.", "bn4.")) for key in missing):
            raise RuntimeError(f"bottleneck weights do not map: missing {missing}, unexpected {unexpected}")
        model.decoder.load_state_dict(source.decoder.state_dict())

    load_student(detector)  # the same initial weights
    medad_log, their_losses = TrainLog(), []

    def anomalib_fit() -> None:
        optimizer = module.configure_optimizers()
        order_generator = torch.Generator().manual_seed(args.seed)  # medad's fit draws its batches from this seed
        for _ in range(args.epochs):
            order = torch.randperm(len(train), generator=order_generator)
            for start in range(0, len(train), detector.batch_size):
                model.train()
                batch = detector.teacher.prepare(train.float_images(order[start:start + detector.batch_size]))
                loss = module.loss(*model(batch))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                their_losses.append(float(loss))

    (_, fit_s), (_, their_fit_s) = timed(lambda: detector.fit(train, None, medad_log)), timed(anomalib_fit)
    losses = [value for *_, value in medad_log.rows]
    print(f"reverse-distillation training loss, first / last step: medad {losses[0]:.4f} / {losses[-1]:.4f}, "
          f"anomalib {their_losses[0]:.4f} / {their_losses[-1]:.4f}", flush=True)
    inputs = detector.teacher.prepare(test)
    medad, theirs, medad_s, theirs_s = score_both(detector, model, test, inputs)
    rows = [agreement("reverse-distillation", f"each trained, {args.epochs} epochs", subset.test.labels, medad, theirs,
                      (fit_s + medad_s, their_fit_s + theirs_s))]
    load_student(detector)  # medad's trained student in anomalib's model: the scoring alone compared
    rows.append(agreement("reverse-distillation", "same trained weights", subset.test.labels, medad,
                          anomalib_scoring(model, inputs), (medad_s, float("nan"))))
    return rows


COMPARISONS = {"patchcore": compare_patchcore, "padim": compare_padim,
               "reverse-distillation": compare_reverse_distillation}


def agreement_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare_anomalib.py agreement",
                                     description="medad's and anomalib's PatchCore, PaDiM and Reverse Distillation on "
                                                 "the same images with the same random backbone weights")
    parser.add_argument("--detectors", default=",".join(AGREEMENT_DETECTORS))
    parser.add_argument("--dataset", default="head-ct", help="a medad dataset (its download under --data-root) or "
                                                             "synthetic (Head-CT-size phantoms)")
    parser.add_argument("--subset", default="", help="default: the dataset's first (synthetic: subtle)")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="draws the random backbone weights and the batches")
    parser.add_argument("--epochs", type=int, default=5, help="Reverse Distillation's training epochs (both sides)")
    parser.add_argument("--coreset-fraction", type=float, default=0.1)
    parser.add_argument("--padim-backbones", default="wide_resnet50_2,resnet18")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--csv", default="", help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    try:
        import anomalib
    except ImportError:
        print("anomalib is not installed: pip install anomalib (an optional extra of this benchmark only)", file=sys.stderr)
        return 2
    unknown = [name for name in args.detectors.split(",") if name not in COMPARISONS]
    if unknown:
        parser.error(f"--detectors: unknown {unknown}; choose among {', '.join(COMPARISONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    subset = load_subset(args)
    print(f"anomalib {anomalib.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.dataset}: {len(subset.train)} training normals, {len(subset.test)} test images "
          f"({int(subset.test.labels.sum())} anomalous) at {args.image_size} px; random backbone weights (seed "
          f"{args.seed})", flush=True)
    rows: list[Agreement] = []
    for name in args.detectors.split(","):
        torch.manual_seed(args.seed)
        for row in COMPARISONS[name](subset, args):
            rows.append(row)
            print(f"{row.detector:<21} {row.variant:<28} Spearman {row.spearman:.4f}  ROC AUC medad {row.auc_medad:.4f} "
                  f"anomalib {row.auc_anomalib:.4f} (|diff| {row.auc_difference:.4f})  maps: Pearson "
                  f"{row.map_pearson:.4f}, largest difference {row.map_largest_difference:.2%} of the range  "
                  f"({row.seconds_medad:.1f} s / {row.seconds_anomalib:.1f} s)", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([f.name for f in dataclasses.fields(Agreement)] + ["auc_difference"])
            writer.writerows([*dataclasses.astuple(row), row.auc_difference] for row in rows)
    failed = [row for row in rows if not row.variant.startswith("anomalib vs")  # a reference row, not medad
              and (row.spearman < 0.99 or row.auc_difference > 0.01)]
    for row in failed:
        print(f"NOT AGREEING: {row.detector} ({row.variant}): Spearman {row.spearman:.4f} (>= 0.99 wanted), ROC AUC "
              f"difference {row.auc_difference:.4f} (<= 0.01 wanted)")
    return 1 if failed else 0


def speed_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare_anomalib.py speed",
                                     description="GANomaly's training step in anomalib and in medad, side by side")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round (after a warm-up step)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        import anomalib
    except ImportError:
        print("anomalib is not installed: pip install anomalib (an optional extra of this benchmark only)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    images = random_images((args.steps + 1) * args.batch_size, args.channels, args.image_size).float_images()
    print(f"anomalib {anomalib.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.image_size} px x{args.channels}, batch {args.batch_size}, {args.steps} steps per round")
    rates: dict[str, list[float]] = {"anomalib": [], "medad": []}
    for round_index in range(args.rounds):
        order = ("anomalib", "medad") if round_index % 2 == 0 else ("medad", "anomalib")
        for name in order:
            rate = (anomalib_rate(images, args.batch_size, args.steps) if name == "anomalib"
                    else medad_rate(args.image_size, args.channels, args.batch_size, args.steps))
            rates[name].append(rate)
            print(f"round {round_index + 1}: {name:<8} {rate:6.2f} img/s", flush=True)
    a, m = statistics.median(rates["anomalib"]), statistics.median(rates["medad"])
    print(f"median: anomalib {a:.2f} img/s ({min(rates['anomalib']):.2f}-{max(rates['anomalib']):.2f}), "
          f"medad {m:.2f} img/s ({min(rates['medad']):.2f}-{max(rates['medad']):.2f}); medad / anomalib = {m / a:.2f}")
    return 0



def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "agreement":
        return agreement_main(argv[1:])
    return speed_main(argv[1:] if argv and argv[0] == "speed" else argv)


if __name__ == "__main__":
    sys.exit(main())
