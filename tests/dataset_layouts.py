"""Tiny fake downloads in each publisher's real layout and file formats (used by tests/test_dataset_adapters.py).

Every builder writes random-texture images (distinct dHashes, so only the copies we make on
purpose are near duplicates) with the publisher's names, nesting, label files and quirks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def noise(rng: np.random.Generator, height: int = 24, width: int = 20) -> np.ndarray:
    """A smooth random grey texture (uint8), distinct per draw."""
    coarse = rng.integers(0, 256, (max(2, height // 4), max(2, width // 4))).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def save(path: Path, pixels: np.ndarray, fmt: str | None = None, mode: str | None = None) -> Path:
    """Write ``pixels`` to ``path`` (``fmt`` overrides the extension: PNG content under a .jpg name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def write_pgm(path: Path, pixels: np.ndarray, maxval: int = 255) -> Path:
    """A binary (P5) PGM, 8- or 16-bit (big-endian) by ``maxval``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pixels.astype(">u2" if maxval > 255 else "u1").tobytes()
    path.write_bytes(f"P5\n{pixels.shape[1]} {pixels.shape[0]}\n{maxval}\n".encode() + data)
    return path


def head_ct(root: Path, n: int = 20, nested: bool = True) -> Path:
    """labels.csv (" hemorrhage" header) + head_ct/head_ct/NNN.png; first half hemorrhage; RGB and RGBA PNGs."""
    rng = np.random.default_rng(1)
    images = root / "head_ct" / "head_ct" if nested else root / "head_ct"
    lines = ["id, hemorrhage"]
    for i in range(n):
        grey = noise(rng, 20 + i % 5, 16 + i % 7)
        if i % 6 == 5:
            save(images / f"{i:03d}.png", np.dstack([grey] * 3 + [np.full_like(grey, 255)]))
        else:
            save(images / f"{i:03d}.png", np.dstack([grey] * 3))
        lines.append(f"{i},{int(i < n // 2)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def yes_no(root: Path, yes: list[str], no: list[str], seed: int = 2) -> Path:
    """``yes/`` and ``no/`` with the given names; a name ending ``.jpg`` whose index is odd holds PNG content."""
    rng = np.random.default_rng(seed)
    for folder, names in (("yes", yes), ("no", no)):
        for k, name in enumerate(names):
            pixels = noise(rng, 24 + k % 3, 24)
            if k % 4 == 1:
                save(root / folder / name, pixels, fmt="PNG")            # PNG content under .jpg
            elif k % 4 == 2:
                save(root / folder / name, np.dstack([pixels] * 3), fmt="JPEG")
            elif k % 4 == 3:
                save(root / folder / name, pixels, fmt="PNG" if name.lower().endswith("png") else "JPEG", mode="L")
            else:
                save(root / folder / name, pixels, fmt="PNG" if name.lower().endswith("png") else "JPEG")
    return root


def brain_tumor_mri(root: Path) -> Path:
    """Navoneel's irregular names, a second copy in brain_tumor_dataset/, a flipped and a brighter normal duplicate."""
    yes = ["Y1.jpg", "Y100.JPG", "Y92.png", "Y2.jpeg", "Y3.jpg", "Y4.jpg", "Y5.jpg", "Y6.jpg"]
    no = ["1 no.jpeg", "no 923.jpg", "N1.JPG", "No11.jpg", "44no.jpg", "no.jpg", "no 9.png", "N2.jpg",
          "N3.jpg", "N4.jpg", "N5.jpg", "N6.jpg"]
    yes_no(root, yes, no)
    yes_no(root / "brain_tumor_dataset", yes[:2], no[:2], seed=9)
    original = np.asarray(Image.open(root / "no" / "N1.JPG").convert("L"))
    save(root / "no" / "N1 flipped.png", original[:, ::-1].copy())
    save(root / "no" / "N1 bright.png", np.clip(original.astype(int) * 1.2 + 10, 0, 255).astype(np.uint8))
    (root / "no" / ".DS_Store").write_bytes(b"\0\1junk")
    return root


def br35h(root: Path, n: int = 10, mask_rcnn: bool = False) -> Path:
    """yes/y0..yN.jpg, no/no0..noN.jpg with some capitalised No*.jpg, unlabelled pred/ (+ Br35H-Mask-RCNN/)."""
    no = [f"No{i}.jpg" if i in (2, 3) else f"no{i}.jpg" for i in range(n)]
    yes_no(root, [f"y{i}.jpg" for i in range(n)], no, seed=3)
    rng = np.random.default_rng(4)
    for i in range(3):
        save(root / "pred" / f"pred{i}.jpg", noise(rng), fmt="JPEG")
    if mask_rcnn:
        br35h_mask_rcnn(root, {"TRAIN": range(n // 2 - 1), "VAL": range(n // 2 - 1, n // 2 + 1), "TEST": range(n // 2 + 1, n - 2)})
    return root


def br35h_polygon(index: int) -> dict[str, object]:
    """The VIA ``shape_attributes`` of a polygon on tumour ``y<index>``: a quadrilateral in the upper-left of its 24 x 24 image."""
    left, top = 2 + index % 3, 3 + index % 2
    return {"name": "polygon", "all_points_x": [left, left + 9, left + 10, left + 1],
            "all_points_y": [top, top + 1, top + 8, top + 9]}


# Extra regions per tumour, as the author's exports write them (ints, or floats with 3 decimals): y0 has a
# polygon alone, y2 a rotated ellipse alone, y3 a polygon and an unrotated ellipse, y4 one circle, y5 several
# circles, y6 a polygon and an ellipse turned the other way, y7 a polygon and a polyline (a shape with no area).
BR35H_EXTRA_REGIONS: dict[int, list[dict[str, object]]] = {
    1: [{"name": "rect", "x": 14, "y": 14, "width": 4, "height": 5}],
    2: [{"name": "ellipse", "cx": 12, "cy": 13, "rx": 8.412, "ry": 3, "theta": 0.611}],
    3: [{"name": "ellipse", "cx": 17, "cy": 16, "rx": 4, "ry": 5, "theta": 0}],
    4: [{"name": "circle", "cx": 11, "cy": 12, "r": 5}],
    5: [{"name": "circle", "cx": 6, "cy": 7, "r": 3}, {"name": "circle", "cx": 16, "cy": 15, "r": 4.86}],
    6: [{"name": "ellipse", "cx": 13, "cy": 12, "rx": 9, "ry": 4.25, "theta": -2.356}],
    7: [{"name": "polyline", "all_points_x": [15, 19, 22], "all_points_y": [16, 20, 17]}],
}
BR35H_WITHOUT_POLYGON = (2, 4, 5)


def br35h_regions(index: int) -> list[dict[str, object]]:
    """The ``shape_attributes`` of every VIA region of tumour ``y<index>`` in the fixture."""
    own = [] if index in BR35H_WITHOUT_POLYGON else [br35h_polygon(index)]
    return own + BR35H_EXTRA_REGIONS.get(index, [])


def br35h_mask_rcnn(root: Path, parts: dict[str, range]) -> Path:
    """Br35H-Mask-RCNN/{TRAIN,VAL,TEST}/: byte copies of the outlined yes/ images + VIA exports keyed ``filename+size``.

    Each split folder holds its images and ``annotations_<split>.json``; ``annotations_all.json``
    (all entries) sits at the top. The JSON is written as the author's: compact, the keys in VIA's order,
    shapes from :func:`br35h_regions`; the last two tumours are in no split (their masks are unknown).
    """
    base = root / "Br35H-Mask-RCNN"
    every = {}
    for split, indices in parts.items():
        entries = {}
        for i in indices:
            data = (root / "yes" / f"y{i}.jpg").read_bytes()
            (base / split).mkdir(parents=True, exist_ok=True)
            (base / split / f"y{i}.jpg").write_bytes(data)
            regions = [{"shape_attributes": shape, "region_attributes": {}} for shape in br35h_regions(i)]
            entries[f"y{i}.jpg{len(data)}"] = {"filename": f"y{i}.jpg", "size": len(data), "regions": regions,
                                                "file_attributes": {}}
        (base / split / f"annotations_{split.lower()}.json").write_text(json.dumps(entries, separators=(",", ":")))
        every.update(entries)
    (base / "annotations_all.json").write_text(json.dumps(every, separators=(",", ":")))
    return root


MIAS_ROWS = [  # ref, bg, class, severity, x, y, radius (None: no coordinates)
    ("mdb001", "G", "CIRC", "B", 535, 425, 197),
    ("mdb002", "G", "CIRC", "B", 522, 280, 69),
    ("mdb005", "F", "CIRC", "B", 477, 133, 30),
    ("mdb005", "F", "CIRC", "B", 500, 168, 26),
    ("mdb006", "F", "NORM", None, None, None, None),
    ("mdb059", "F", "CIRC", "B", None, None, None),
]


def mias(root: Path, n_normal_extra: int = 9) -> Path:
    """Kaggle mini-MIAS: Info.txt (NORM rows with trailing spaces) + all-mias/mdbNNN.pgm (1024 x 1024 P5)."""
    rng = np.random.default_rng(5)
    lines = ["REFNUM BG CLASS SEVERITY X Y RADIUS "]
    rows = list(MIAS_ROWS) + [(f"mdb{7 + i:03d}", "D", "NORM", None, None, None, None) for i in range(n_normal_extra)]
    for ref, bg, kind, severity, x, y, radius in rows:
        lines.append(" ".join(str(t) for t in (ref, bg, kind, severity, x, y, radius) if t is not None) + (" " if kind == "NORM" else ""))
    (root / "Info.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "Info.txt").write_text("\n".join(lines) + "\n")
    for ref in sorted({r[0] for r in rows}):
        breast = np.zeros((1024, 1024), dtype=np.uint8)
        breast[:, :700] = 60 + noise(rng, 1024, 700) // 2
        write_pgm(root / "all-mias" / f"{ref}.pgm", breast)
    return root


def oct(root: Path, n_train: int = 12, n_test: int = 3) -> Path:
    """Kaggle OCT2017: "OCT2017 /{train,test,val}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg"."""
    rng = np.random.default_rng(6)
    base = root / "OCT2017 "
    for split, count in (("train", n_train), ("test", n_test), ("val", 1)):
        for c, name in enumerate(("NORMAL", "CNV", "DME", "DRUSEN")):
            for i in range(count if name == "NORMAL" or split != "train" else 2):
                patient = 1000 + (i // 2) + (0 if split == "train" else 500) + c * 100
                save(base / split / name / f"{name}-{patient}-{i}.jpeg", noise(rng, 20, 30), fmt="JPEG")
            (base / split / name / ".DS_Store").write_bytes(b"x")
    return root


def cnmc(root: Path) -> Path:
    """Kaggle C-NMC_Leukemia: training_data/fold_N/{all,hem}/UID_*.bmp + validation_data prelim CSV and 1.bmp..."""
    rng = np.random.default_rng(7)
    base = root / "C-NMC_Leukemia"

    def cell() -> np.ndarray:
        return np.dstack([noise(rng, 16, 16), noise(rng, 16, 16), noise(rng, 16, 16)])

    for fold in range(3):
        for k in range(3):
            save(base / "training_data" / f"fold_{fold}" / "hem" / f"UID_H{fold * 3 + k % 2}_{k}_1_hem.bmp", cell())
            save(base / "training_data" / f"fold_{fold}" / "all" / f"UID_{fold + 1}_{k}_2_all.bmp", cell())
    lines = ["Patient_ID,new_names,labels"]
    for i in range(1, 7):
        label = int(i % 2 == 0)
        uid = f"UID_{20 + i % 3}_{i}_1_all.bmp" if label else f"UID_H{30 + i % 2}_{i}_1_hem.bmp"
        save(base / "validation_data" / "C-NMC_test_prelim_phase_data" / f"{i}.bmp", cell())
        lines.append(f"{uid},{i}.bmp,{label}")
    (base / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text("\n".join(lines) + "\n")
    save(base / "testing_data" / "C-NMC_test_final_phase_data" / "1.bmp", cell())
    return root


def covidx(root: Path, binary: bool = False) -> Path:
    """train/ test/ images and COVID-Net label files (SIRM ids with a space, a missing source, mixed PNG/JPEG)."""
    rng = np.random.default_rng(8)
    files = {"train": [], "test": []}
    classes = ("negative", "positive") if binary else ("normal", "pneumonia", "COVID-19")
    for part, per_class in (("train", 8), ("test", 3)):
        for kind in classes:
            for i in range(per_class):
                name = f"{part}-{kind}-{i}.{'png' if i % 2 else 'jpg'}"
                save(root / part / name, noise(rng, 28, 32), fmt="PNG" if i % 2 else "JPEG")
                patient = f"COVID {part}{i // 2}" if kind == "COVID-19" else f"{part}{kind}{i // 2}"
                source = "" if (part == "test" and i == 0) else (" sirm" if kind == "COVID-19" else " rsna")
                files[part].append(f"{patient} {name} {kind}{source}")
    for part, lines in files.items():
        name = f"{part}.txt" if binary else f"{part}_COVIDx9A.txt"
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def montgomery_shenzhen(root: Path, n: int = 8) -> Path:
    """NLM zips: MontgomerySet (16-bit PNG, 12 bits used, left/right masks) + double-nested ChinaSet_AllFiles (RGB)."""
    rng = np.random.default_rng(10)
    mont = root / "MontgomerySet"
    for i in range(n):
        stem = f"MCUCXR_{i + 1:04d}_{i % 2}"
        save(mont / "CXR_png" / f"{stem}.png", (noise(rng, 40, 32).astype(np.uint16) * 16))
        left = np.zeros((40, 32), dtype=np.uint8)
        left[5:35, 2:14] = 255
        right = np.zeros((40, 32), dtype=np.uint8)
        right[5:35, 18:30] = 255
        save(mont / "ManualMask" / "leftMask" / f"{stem}.png", left)
        save(mont / "ManualMask" / "rightMask" / f"{stem}.png", right)
        (mont / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (mont / "ClinicalReadings" / f"{stem}.txt").write_text("Patient's Sex: F\nPatient's Age: 027Y\nnormal\n")
    (mont / "CXR_png" / "Thumbs.db").write_bytes(b"thumbs")
    china = root / "ChinaSet_AllFiles" / "ChinaSet_AllFiles"
    for i in range(n + 2):
        stem = f"CHNCXR_{i + 1:04d}_{i % 2}"
        save(china / "CXR_png" / f"{stem}.png", np.dstack([noise(rng, 36, 36)] * 3))
    return root


def rider(root: Path, n_patients: int = 4, per_patient: int = 4, by_uid: bool = False) -> Path:
    """NBIA "descriptive" folders of 16-bit MR DICOM (rescale slope/intercept, window) + rider_slices.csv."""
    from pydicom.dataset import FileDataset as DicomFile
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    rng = np.random.default_rng(11)
    lines = ["sop_instance_uid,label" if by_uid else "path,label"]
    for p in range(n_patients):
        patient = f"RIDER Neuro MRI-{1023805636 + p}"
        series = root / "RIDER NEURO MRI" / patient / "09-03-1904-BRAINRESEARCH-88413" / "17-sag 3d gre c-77368"
        series.mkdir(parents=True, exist_ok=True)
        for k in range(per_patient):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            uid = generate_uid()
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = series / f"1-{k + 1:02d}.dcm"
            ds = DicomFile(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID, ds.Modality = MRImageStorage, uid, patient, "MR"
            pixels = (noise(rng, 32, 32).astype(np.uint16) * 8)
            ds.Rows, ds.Columns = pixels.shape
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.RescaleSlope, ds.RescaleIntercept = 2.0, -100.0
            ds.WindowCenter, ds.WindowWidth = 1900.0, 3800.0
            ds.PixelData = pixels.tobytes()
            ds.save_as(path, enforce_file_format=True)
            label = int(k >= per_patient // 2 and p % 2 == 0 or k == per_patient - 1)
            lines.append(f"{uid if by_uid else path.relative_to(root).as_posix()},{label}")
    (root / "rider_slices.csv").write_text("\n".join(lines) + "\n")
    return root


def covid_ct(root: Path, n_covid: int = 10, n_non: int = 12) -> Path:
    """UCSD COVID-CT: Images-processed/CT_COVID, CT_NonCOVID (``%`` in names, PNG/JPEG/RGBA) + Data-split txts."""
    rng = np.random.default_rng(12)
    splits: dict[tuple[str, str], list[str]] = {}
    for folder, short, count in (("CT_COVID", "COVID", n_covid), ("CT_NonCOVID", "NonCOVID", n_non)):
        for i in range(count):
            name = f"2020.02.10.2002{i}-p6-52%{i}.png" if i % 2 else f"{i}%0.jpg"
            pixels = noise(rng, 30, 26)
            if i % 5 == 4:
                save(root / "Images-processed" / folder / name, np.dstack([pixels] * 3 + [np.full_like(pixels, 255)]), fmt="PNG")
            else:
                save(root / "Images-processed" / folder / name, pixels, fmt="PNG" if i % 2 else "JPEG")
            part = "train" if i < count // 2 else ("val" if i < count * 3 // 4 else "test")
            splits.setdefault((short, part), []).append(name)
    for (short, part), names in splits.items():
        path = root / "Data-split" / short / f"{part}CT_{short}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\r\n".join(names) + "\r\n")
    return root


def similar_looking(rng: np.random.Generator, n: int, size: int = 64) -> list[np.ndarray]:
    """``n`` distinct images that look alike: one shared smooth texture (a scanner's background), a disc at a jittered
    place and size, and an image's own smooth perturbation. Their dHashes differ in 6-30 bits of 256, so joining
    every close pair transitively chains hundreds of them into one group; none is a copy of another."""
    from scipy import ndimage

    base = ndimage.gaussian_filter(np.random.default_rng(123).normal(0, 1, (size, size)), 3) * 400
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    images = []
    for _ in range(n):
        cy, cx = rng.normal(0, 0.05, 2)
        radius = rng.uniform(0.12, 0.2)
        disc = ((y - cy) / radius) ** 2 + ((x - cx) / radius) ** 2 < 1
        own = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3) * 70
        images.append(np.clip(110 + base + 70 * disc + own, 0, 255).astype(np.uint8))
    return images


def br35h_similar(root: Path, per_class: int = 1500) -> Path:
    """Br35H's layout (yes/y*.jpg, no/no*.jpg) at its full 1500 + 1500, every image distinct but similar-looking."""
    rng = np.random.default_rng(21)
    images = similar_looking(rng, 2 * per_class)
    for i in range(per_class):
        save(root / "yes" / f"y{i}.jpg", images[i], fmt="PNG")
        save(root / "no" / f"no{i}.jpg", images[per_class + i], fmt="PNG")
    return root


def slice_phantom(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """An axial-slice-like phantom (uint8): a skull ring around brain tissue, two ventricles and lesions of a drawn
    anatomy, placed off-centre so that no mirror image or half turn of it resembles it. Distinct draws are
    different 'patients'."""
    from scipy import ndimage

    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    head = (y / 0.42) ** 2 + (x / 0.34) ** 2
    image = np.where(head < 1, 150.0, 0.0) + np.where((head >= 0.85) & (head < 1), 80.0, 0.0)
    for _ in range(2):  # ventricles
        cy, cx = rng.uniform(-0.15, 0.05), rng.uniform(-0.12, 0.12)
        ry, rx = rng.uniform(0.06, 0.16), rng.uniform(0.02, 0.05)
        image[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] = 40.0
    for _ in range(int(rng.integers(2, 5))):  # lesions and gyri: bright or dark blobs
        cy, cx, radius = rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.25), rng.uniform(0.03, 0.09)
        image[((y - cy) ** 2 + (x - cx) ** 2 < radius ** 2) & (head < 0.8)] = rng.choice([70.0, 230.0])
    shading = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 12) * 600  # a coil's smooth bias field
    return np.clip(ndimage.gaussian_filter(image, 1.5) + shading * (head < 1), 0, 255).astype(np.uint8)


def copies_and_slices(root: Path, n_slices: int = 12) -> tuple[Path, dict[str, list[str]]]:
    """Br35H's layout holding one phantom slice and its copies, as downloads hold them, among ``n_slices`` distinct
    phantom slices: ``yes/y0.jpg`` (JPEG, quality 95), ``y1.jpg`` its byte copy, ``y2.png`` the same pixels as PNG,
    ``y3.png`` mirrored left-right, ``y4.png`` turned half round, ``y5.jpg`` re-saved at JPEG quality 60,
    ``y6.png`` its top row cropped off and resized back; then one distinct slice a file. Returns the root and
    the copy family's names (``family``) and the distinct slices' (``distinct``), relative to the root."""
    rng = np.random.default_rng(7)
    base = slice_phantom(rng)
    yes = root / "yes"
    yes.mkdir(parents=True, exist_ok=True)
    Image.fromarray(base).save(yes / "y0.jpg", quality=95)
    decoded = np.asarray(Image.open(yes / "y0.jpg"))
    (yes / "y1.jpg").write_bytes((yes / "y0.jpg").read_bytes())
    save(yes / "y2.png", decoded)
    save(yes / "y3.png", decoded[:, ::-1].copy())
    save(yes / "y4.png", decoded[::-1, ::-1].copy())
    Image.fromarray(decoded).save(yes / "y5.jpg", quality=60)
    side = decoded.shape[0]
    save(yes / "y6.png", np.asarray(Image.fromarray(decoded[1:]).resize((side, side), Image.BILINEAR)))
    family = [f"yes/y{i}.{'png' if i in (2, 3, 4, 6) else 'jpg'}" for i in range(7)]
    distinct = []
    for k in range(n_slices):
        folder, name = ("yes", f"y{7 + k}.png") if k % 2 else ("no", f"no{k}.png")
        save(root / folder / name, slice_phantom(rng))
        distinct.append(f"{folder}/{name}")
    return root, {"family": family, "distinct": distinct}
