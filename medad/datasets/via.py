"""Region exports of the VGG Image Annotator (VIA 1 and 2) as anomaly outlines in source pixels.

A VIA export is a JSON object ``{filename + size: {"filename", "size", "regions", "file_attributes"}}``
(or a project file holding it under ``_via_img_metadata``); ``regions`` is a list (VIA 2) or a dict of
index -> region (VIA 1), each region ``{"shape_attributes": {"name": ..., ...}, "region_attributes": {}}``.
VIA's coordinates are image pixels, x to the right and y down, and these shapes have an area:

- ``polygon``: ``all_points_x``, ``all_points_y`` (the vertices, in drawing order);
- ``ellipse``: ``cx``, ``cy``, ``rx``, ``ry``, ``theta``: VIA draws it with the canvas call
  ``ellipse(cx, cy, rx, ry, theta)``, so the ``rx`` semi-axis points along (cos theta, sin theta) in (x, y),
  theta in radians turning from +x towards +y (clockwise on screen). VIA 1.x and early 2.0 exports have no
  ``theta`` (their ellipses cannot be turned): a missing one reads as 0, ``rx`` along x;
- ``circle``: ``cx``, ``cy``, ``r``;
- ``rect``: ``x``, ``y``, ``width``, ``height`` (top-left corner and extent).

Pixel convention (the same for every shape, and the one :func:`medad.datasets.io.polygon_mask` has always
used): pixel (row, col) is the point (x = col, y = row), and it is inside a shape when that point lies
inside the shape or on its edge. So an ellipse covers the pixels with
``((dx cos t + dy sin t) / rx)**2 + ((-dx sin t + dy cos t) / ry)**2 <= 1`` (dx = col - cx, dy = row - cy),
a circle those with ``dx**2 + dy**2 <= r**2``, a rect rows ``y .. y + height`` and columns ``x .. x + width``
(both ends included), a polygon those ``skimage.draw.polygon`` fills (its edges included).

Any other shape name (VIA's ``point`` and ``polyline`` outline no area) cannot be filled: it is recorded by
name, and the caller makes that image's mask unknown rather than drawing the rest of its regions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medad.datasets.base import DatasetError

Polygon = tuple[tuple[float, float], ...]          # (row, col) vertices in source pixels
Ellipse = tuple[float, float, float, float, float]  # (row, col, rx, ry, theta): see the module docstring
Circle = tuple[float, float, float]                 # (row, col, radius)
Rect = tuple[float, float, float, float]            # (top, left, height, width)

# The attributes each fillable shape needs (numbers; the polygon's are lists of numbers).
SHAPE_KEYS = {"polygon": ("all_points_x", "all_points_y"), "ellipse": ("cx", "cy", "rx", "ry", "theta"),
              "circle": ("cx", "cy", "r"), "rect": ("x", "y", "width", "height")}


@dataclass
class Outlines:
    """The regions of one image: the fillable ones as source-pixel shapes, the others by shape name.

    Sets, so that the same region exported twice (a split's file and the all-images file) counts once.
    """

    polygons: set[Polygon] = field(default_factory=set)
    ellipses: set[Ellipse] = field(default_factory=set)
    circles: set[Circle] = field(default_factory=set)
    rects: set[Rect] = field(default_factory=set)
    unfillable: Counter[str] = field(default_factory=Counter)

    def update(self, other: Outlines) -> None:
        self.polygons |= other.polygons
        self.ellipses |= other.ellipses
        self.circles |= other.circles
        self.rects |= other.rects
        self.unfillable |= other.unfillable   # the larger count per name: the same regions seen in two files

    def fillable(self) -> bool:
        """True when the image has regions and every one of them can be filled (its mask is then complete)."""
        return not self.unfillable and bool(self.polygons or self.ellipses or self.circles or self.rects)

    def filled_polygons(self) -> tuple[Polygon, ...]:
        """The polygons and the rects as their 4 corners (the polygon rule includes the edges), sorted."""
        corners = {((top, left), (top, left + width), (top + height, left + width), (top + height, left))
                   for top, left, height, width in self.rects}
        return tuple(sorted(self.polygons | corners))

    def shape_counts(self) -> Counter[str]:
        """Regions per VIA shape name, the unfillable ones included."""
        counts = Counter({"polygon": len(self.polygons), "ellipse": len(self.ellipses), "circle": len(self.circles),
                          "rect": len(self.rects)})
        return +(counts + self.unfillable)


def _numbers(source: Path, key: str, name: str, shape: dict, keys: tuple[str, ...]) -> list:
    values = [shape.get(k) for k in keys]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise DatasetError(f"{source}: entry {key!r} has a region of shape {name!r} whose " + ", ".join(keys) + " are not all "
                           f"finite numbers (got {dict(zip(keys, values))!r:.160})")
    return values


def _region(source: Path, key: str, region: object, outlines: Outlines) -> None:
    """Add one VIA region to ``outlines`` (an unknown shape by name); a malformed one is an error naming it."""
    shape = region.get("shape_attributes") if isinstance(region, dict) else None
    if not isinstance(shape, dict):
        raise DatasetError(f"{source}: entry {key!r} has a region without 'shape_attributes'; expected VIA "
                           f"regions like {{'shape_attributes': {{'name': 'polygon', 'all_points_x': [...], 'all_points_y': [...]}}}}")
    name = shape.get("name")
    if name == "polygon":
        xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or len(xs) < 3:
            raise DatasetError(f"{source}: entry {key!r} has a polygon whose all_points_x / all_points_y are not two "
                               f"lists of the same length >= 3 (got {xs!r:.80} and {ys!r:.80})")
        try:
            outlines.polygons.add(tuple((float(y), float(x)) for x, y in zip(xs, ys)))
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{source}: entry {key!r} has a non-numeric polygon vertex: {error}") from error
    elif name in ("ellipse", "circle", "rect"):
        if name == "ellipse" and "theta" not in shape:  # VIA 1.x, early 2.0: axis-aligned, no theta written
            shape = {**shape, "theta": 0.0}
        values = _numbers(source, key, name, shape, SHAPE_KEYS[name])
        extents = values[2:4] if name != "circle" else values[2:]
        if any(v <= 0 for v in extents):
            raise DatasetError(f"{source}: entry {key!r} has a region of shape {name!r} whose size is not positive "
                               f"({dict(zip(SHAPE_KEYS[name], values))!r}); expected radii / width and height > 0")
        if name == "ellipse":
            cx, cy, rx, ry, theta = map(float, values)
            outlines.ellipses.add((cy, cx, rx, ry, theta))
        elif name == "circle":
            cx, cy, r = map(float, values)
            outlines.circles.add((cy, cx, r))
        else:
            x, y, width, height = map(float, values)
            outlines.rects.add((y, x, height, width))
    else:
        outlines.unfillable[str(name)] += 1


def read_via(source: Path) -> dict[str, Outlines]:
    """File name -> the outlines of its regions, from one VIA export (see the module docstring).

    Entries are keyed by their ``filename`` (the export's own key is ``filename + size``); a file listed
    with no region maps to empty outlines.
    """
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read VIA annotations {source}: {type(error).__name__}: {error}") from error
    data = data.get("_via_img_metadata", data) if isinstance(data, dict) else data   # a full VIA project file
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: expected a VIA export, a JSON object of entries, got {type(data).__name__}")
    found: dict[str, Outlines] = {}
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DatasetError(f"{source}: entry {key!r} has no 'filename'; expected "
                               f"{{'filename': 'y0.jpg', 'size': ..., 'regions': [...]}}")
        regions = entry.get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        if not isinstance(regions, list):
            raise DatasetError(f"{source}: entry {key!r} has 'regions' of type {type(regions).__name__}; "
                               "expected a list (VIA 2) or an object of index -> region (VIA 1)")
        outlines = found.setdefault(entry["filename"], Outlines())
        for region in regions:
            _region(source, key, region, outlines)
    return found


def summary(outlines: dict[str, Outlines]) -> str:
    """One line: regions per shape over the outlined images, and which images' masks are unknown and why."""
    outlined = {name: o for name, o in outlines.items() if o.shape_counts()}
    counts = sum((o.shape_counts() for o in outlined.values()), Counter())
    shapes = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    line = f"VIA regions: {shapes or 'none'} over {len(outlined)} images"
    unfillable = sorted(name for name, o in outlined.items() if o.unfillable)
    if not unfillable:
        return line + "; every region filled, no mask partial"
    names = sum((outlined[name].unfillable for name in unfillable), Counter())
    return (line + f"; {len(unfillable)} image{'s' if len(unfillable) > 1 else ''} with a region of a shape that "
            "outlines no area or is unknown ("
            + ", ".join(f"{name} {n}" for name, n in sorted(names.items())) + f"), so their masks are unknown, not "
            f"partial: {', '.join(unfillable[:5])}" + (" ..." if len(unfillable) > 5 else ""))
