#!/usr/bin/env python
"""GANomaly's training step in anomalib and in medad, side by side: the same inputs, alternated in one process.

    pip install anomalib          # an optional extra: nothing else in medad needs it
    python benchmarks/compare_anomalib.py --image-size 128 --batch-size 32 --channels 3 --steps 6 --rounds 3

anomalib's side is its ``GanomalyModel`` torch model with its ``GeneratorLoss`` and ``DiscriminatorLoss``, stepped
as its Lightning module's ``training_step`` does (one forward, the generator step with the graph kept, then
the discriminator on the detached fake; Adam, lr 2e-4, betas (0.5, 0.999)); Lightning's own overhead is left
out, so the comparison favours anomalib if anything. medad's side is :class:`medad.detectors.ganomaly`'s
``fit`` (every stamp of its ``TrainLog``), at the same width (64), latent size (100) and batch size. Each
round times ``--steps`` steps of each (the first step of each round is a warm-up and not counted); rounds
alternate which goes first, so that a clock that drifts during the run hurts both alike. Prints the img/s
of each round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
