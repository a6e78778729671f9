"""Where a job keeps its images: on its device, as uint8, when they fit.

A fit reads every training image once per epoch. Held on the host, each batch is gathered there and copied to
the device (a copy the host waits for); held on the device as uint8 (a quarter of float32's bytes: OCT's 26,315
training images at 128 px x 3 channels take 1.3 GB), each batch is gathered, converted to float and scaled by
1/255 on the device, which gives the same numbers (uint8 -> float32 and the division are exact in both places).
"""

from __future__ import annotations

import torch

from medad.datasets.base import Subset

# The images of a job may take at most this share of the device's free memory; beyond it they stay on the host
# (the networks, their activations and the other workers sharing the device need the rest).
DEVICE_IMAGE_SHARE = 0.25


def subset_image_bytes(subset: Subset) -> int:
    """Bytes of every part's uint8 images and ROI masks (a part that is another part counted once)."""
    parts = {id(part): part for part in (subset.train, subset.val, subset.test, subset.anomaly_pool) if part is not None}
    return sum(part.images.nbytes + (0 if part.roi_masks is None else part.roi_masks.nbytes) for part in parts.values())


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes; None where torch cannot tell (other devices)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def place_images(subset: Subset, device: torch.device, free_bytes: int | None = None) -> tuple[Subset, str]:
    """``subset`` with its images on ``device`` when they take at most :data:`DEVICE_IMAGE_SHARE` of its free
    memory (``free_bytes``, measured when not given), and a line for the job's log saying where they are."""
    if device.type == "cpu":
        return subset, "images on the host (the job's device)"
    size = subset_image_bytes(subset)
    free = free_device_bytes(device) if free_bytes is None else free_bytes
    if free is not None and size > DEVICE_IMAGE_SHARE * free:
        return subset, (f"images on the host: {size / 2**20:.0f} MB of uint8 images exceed "
                        f"{DEVICE_IMAGE_SHARE:.0%} of the {free / 2**20:.0f} MB free on {device}")
    return subset.to(device), f"images on {device} as uint8 ({size / 2**20:.0f} MB)"
