"""The config sections the plugin layers read: detectors, hiding styles, DNN targets.

They sit below `config`, which extends them with the checks that need the plugin
and style registries and holds the whole tree; so a plugin imports these, never
`config`, and nothing imports in a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Target = Literal["cpu", "opencl", "opencl_fp16", "cuda", "cuda_fp16"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorFiles(Section):
    """Explicit model files (a custom-trained export); no checksum is required."""

    weights: Path | None = None
    graph: Path | None = None
    labels: Path | None = None


class PluginOptions(Section):
    """The keys of one detector plugin, under `detector.<type key>` (each plugin module declares its own)."""


class DetectorSettings(Section):
    """`detector`: the keys every plugin reads (its own sit under `detector.<type key>`: see config)."""

    model: str = "mask_rcnn_inception_v2_coco"
    target: Target = "cpu"
    on_unavailable: Literal["fail", "cpu"] = "fail"
    confidence: Annotated[float, Field(ge=0, le=1)] = 0.45
    nms: Annotated[float, Field(ge=0, le=1)] = 0.45
    classes: list[str] = Field(default_factory=lambda: ["person"], min_length=1)
    # Longest side the frame is scaled to before inference; 0 keeps the model's own choice.
    input_size: Annotated[int, Field(ge=0, le=4096)] = 0
    # With the class face (and not person): also hide the head of every person the model finds
    # (faces turned away, or too small for the face model); the persons are followed between
    # keyframes, so their walking is not mistaken for something unseen.
    heads: bool = True
    threads: Annotated[int, Field(ge=0, le=256)] = 0
    files: DetectorFiles = DetectorFiles()

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("classes must not repeat")
        return v


class ProtectSettings(Section):
    """`protect`: how hidden pixels look (the style checks its name against the styles: see config)."""

    # A registered hiding style (see edgeguard.styles): blur, pixelate, fill.
    style: str = "blur"
    shape: Literal["mask", "box"] = "mask"
    blur_kernel: Annotated[int, Field(ge=3, le=501)] = 51
    pixelate_block: Annotated[int, Field(ge=2, le=512)] = 16
    color: tuple[
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
    ] = (0, 0, 0)
    dilate: Annotated[int, Field(ge=0, le=256)] = 8
    # Persons are also hidden this share of their height above their box: detectors often cut
    # a box at the forehead, leaving a face above it.
    head_margin: Annotated[float, Field(ge=0, le=1)] = 0.15

    @field_validator("blur_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd")
        return v
