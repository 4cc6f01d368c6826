"""Prompts a user gives for a picture or a volume: a box and / or points per slice, or one box through a volume,
in voxel indices of the file (`SlicePrompt`, `Box3D`), and their translation to the slices the model segments
(`canonical_prompts`; the model's order is `medsa_peft.io.Reorientation`'s).

Coordinates: a slice is `array[:, :, z]`; x runs along its columns (axis 1), y along its rows (axis 0). A single
non-axial slice (one voxel along a file axis, more along the axial one: `Reorientation.single_slice`) is one slice,
the 2D picture of its two other axes as stored: for a (1, H, W) volume y counts axis 1 and x axis 2, for (H, 1, W)
y axis 0 and x axis 2, and z is 0. Boxes use pixel edges: (x0, y0, x1, y1) covers columns x0 <= x < x1 and rows
y0 <= y < y1; a point (x, y) is the pixel at column x, row y.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.prompts import PromptError, SlicePrompt
from ..io import Reorientation

__all__ = ["Box3D", "Prompt", "PromptError", "SlicePrompt", "canonical_prompts", "prompted_file_slices"]


@dataclass(frozen=True)
class Box3D:
    """A box around an object in a volume, in voxel indices of the file: x along columns (axis 1), y along rows
    (axis 0), z along slices (axis 2), or the axes of a single non-axial slice (module docstring); x1, y1, z1 are
    far edges. It becomes the box (x0, y0, x1, y1) on every slice z0 <= z < z1; the other slices get no prompt and
    an empty mask."""

    x0: float
    y0: float
    z0: int
    x1: float
    y1: float
    z1: int

    def __post_init__(self):
        if self.z0 != int(self.z0) or self.z1 != int(self.z1):
            raise PromptError(f"z0 and z1 of a 3D box are slice indices, got {self.z0:g}, {self.z1:g}")
        object.__setattr__(self, "z0", int(self.z0))
        object.__setattr__(self, "z1", int(self.z1))
        if not (self.x0 < self.x1 and self.y0 < self.y1 and self.z0 < self.z1):
            raise PromptError(f"a 3D box needs x0 < x1, y0 < y1 and z0 < z1, got {self}")

    def check_inside(self, shape: tuple[int, int, int], where: str) -> None:
        rows, columns, slices = shape
        if self.x0 < 0 or self.y0 < 0 or self.z0 < 0 or self.x1 > columns or self.y1 > rows or self.z1 > slices:
            raise PromptError(
                f"{where}: 3D box (x0, y0, z0, x1, y1, z1) = ({self.x0:g}, {self.y0:g}, {self.z0}, {self.x1:g}, "
                f"{self.y1:g}, {self.z1}) lies outside the {columns} x {rows} x {slices} (x, y, z) volume"
            )


Prompt = SlicePrompt | Box3D | Sequence[SlicePrompt | None]


def _xy_box(edges: dict[int, tuple[float, float]]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) from the pixel-edge intervals along rows (axis 0) and columns (axis 1)."""
    return edges[1][0], edges[0][0], edges[1][1], edges[0][1]


def _canonical_slice_prompt(reorientation: Reorientation, prompt: SlicePrompt) -> SlicePrompt:
    """An in-plane prompt of a file slice on the matching canonical slice (needs `keeps_slice_axis`)."""
    box = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        box = _xy_box(reorientation.edges([(y0, y1), (x0, x1)]))
    points = []
    for x, y in prompt.points:
        coordinates = dict((reorientation.index(0, y), reorientation.index(1, x)))
        points.append((coordinates[1], coordinates[0]))
    return SlicePrompt(box, tuple(points), prompt.labels)


def _canonical_box_prompts(reorientation: Reorientation, box: Box3D) -> list[SlicePrompt | None]:
    """One prompt per canonical slice: the 3D box's 2D box inside its slice range, None elsewhere."""
    edges = reorientation.edges([(box.y0, box.y1), (box.x0, box.x1), (box.z0, box.z1)])
    in_plane = SlicePrompt(box=_xy_box(edges))
    slice_range = range(int(edges[2][0]), int(edges[2][1]))
    return [in_plane if index in slice_range else None for index in range(reorientation.canonical_shape[2])]


def canonical_prompts(prompt: Prompt, reorientation: Reorientation, where: str) -> list[SlicePrompt | None]:
    """The prompt of every canonical slice, from a prompt given on the file's slices (validated there)."""
    rows, columns, slices = reorientation.slice_shape
    if isinstance(prompt, SlicePrompt):
        prompt.check_inside(rows, columns, where)
        if not prompt.points:  # the same box on every slice is a 3D box through the whole volume
            x0, y0, x1, y1 = prompt.box
            prompt = Box3D(x0, y0, 0, x1, y1, slices)
        else:
            prompt = [prompt] * slices
    if isinstance(prompt, Box3D):
        prompt.check_inside(reorientation.slice_shape, where)
        return _canonical_box_prompts(reorientation, prompt)
    prompts = list(prompt)
    if len(prompts) != slices:
        raise PromptError(f"{where}: {len(prompts)} slice prompts for {slices} slices; give one (or None) per slice")
    for index, slice_prompt in enumerate(prompts):
        if slice_prompt is not None:
            slice_prompt.check_inside(rows, columns, f"{where}, slice {index}")
    if not reorientation.keeps_slice_axis:
        raise PromptError(
            f"{where}: its slices (axis 2) are not axial, and the model segments axial slices of the canonical "
            "(RAS+) orientation; per-slice prompts and points cannot follow them there. Give a box or a 3D box."
        )
    canonical: list[SlicePrompt | None] = [None] * slices
    for index, slice_prompt in enumerate(prompts):
        if slice_prompt is not None:
            canonical[int(reorientation.index(2, index)[1])] = _canonical_slice_prompt(reorientation, slice_prompt)
    return canonical


def prompted_file_slices(prompt: Prompt, slices: int) -> np.ndarray:
    """bool (slices,): the file slices (along `Reorientation.slice_axes[2]`) that `prompt` (validated by
    `canonical_prompts`) prompts; masks are empty on the others, also when the file's slices are not the canonical
    slices the model segments."""
    if isinstance(prompt, SlicePrompt):
        return np.ones(slices, bool)
    if isinstance(prompt, Box3D):
        prompted = np.zeros(slices, bool)
        prompted[prompt.z0 : prompt.z1] = True
        return prompted
    return np.array([slice_prompt is not None for slice_prompt in prompt], bool)
