"""Stand-in ``frozen_inference_graph.pb`` for OpenCV's Mask R-CNN InceptionV2 text graph.

The real weights (~64 MB, TF model zoo) cannot be fetched here. OpenCV's importer
builds the network from the ``.pbtxt`` and only looks up ``Const`` nodes by name in
the binary graph, so a GraphDef holding every constant the text graph references,
with the real shapes and seeded random values, loads and runs at the real cost.
Shapes come from walking the text graph and propagating channel counts; the only
model knowledge added is the TF-slim InceptionV2 layer widths and the head sizes.
The protobuf wire format is written by hand (no TensorFlow, no protobuf package).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import struct
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

STANDIN_NAME = "frozen_inference_graph.pb"

# TF-slim InceptionV2 depths (depth_multiplier 1): per block, per branch, in graph order.
_MIXED_WIDTHS: dict[str, tuple[tuple[int, ...], ...]] = {
    "Mixed_3b": ((64,), (64, 64), (64, 96, 96), (32,)),
    "Mixed_3c": ((64,), (64, 96), (64, 96, 96), (64,)),
    "Mixed_4a": ((128, 160), (64, 96, 96)),
    "Mixed_4b": ((224,), (64, 96), (96, 128, 128), (128,)),
    "Mixed_4c": ((192,), (96, 128), (96, 128, 128), (128,)),
    "Mixed_4d": ((160,), (128, 160), (128, 160, 160), (96,)),
    "Mixed_4e": ((96,), (128, 192), (160, 192, 192), (96,)),
    "Mixed_5a": ((128, 192), (192, 256, 256)),
    "Mixed_5b": ((352,), (192, 320), (160, 224, 224), (128,)),
    "Mixed_5c": ((352,), (192, 320), (192, 224, 224), (128,)),
}
_STEM_WIDTHS = {"Conv2d_1a_7x7": 64, "Conv2d_2b_1x1": 64, "Conv2d_2c_3x3": 192}
_DEPTH_MULTIPLIER = 8  # separable Conv2d_1a_7x7: min(64 // 3, 8)
_RPN_DEPTH = 512  # first_stage_box_predictor_depth
_MASK_CONV_DEPTH = 256  # 2 ** int((log2(1024) + log2(90)) / 2)
_CROP_SIZE = 14  # initial_crop_size
_MASK_SIZE = 15
_PERSON_LOGIT = 6.0  # second-stage class bias for index 1 (0 is background)
_PERSON_MASK_LOGIT = 1.0
_PREPROCESS = {"Preprocessor/mul/x": 2.0 / 255.0, "Preprocessor/sub/y": 1.0}

_DT_FLOAT, _DT_INT32 = 1, 3
_Array = npt.NDArray[np.float32] | npt.NDArray[np.int32]
_SCOPE_RE = re.compile(r"InceptionV2/(Mixed_\d[a-z])/(Branch_\d)/")
_KERNEL_RE = re.compile(r"_(\d+)x(\d+)$")


# --------------------------------------------------------------- text format


class _Msg:
    """A parsed text-format protobuf message: ordered (field, value) pairs."""

    def __init__(self, fields: list[tuple[str, str | _Msg]]) -> None:
        self.fields = fields

    def texts(self, key: str) -> list[str]:
        return [v for k, v in self.fields if k == key and isinstance(v, str)]

    def subs(self, key: str) -> list[_Msg]:
        return [v for k, v in self.fields if k == key and isinstance(v, _Msg)]

    def text(self, key: str) -> str:
        values = self.texts(key)
        if not values:
            raise ValueError(f"text graph: field {key!r} missing")
        return values[0]

    def sub(self, key: str) -> _Msg:
        values = self.subs(key)
        if not values:
            raise ValueError(f"text graph: message {key!r} missing")
        return values[0]

    def attr(self, name: str) -> _Msg:
        for entry in self.subs("attr"):
            if entry.text("key") == name:
                return entry.sub("value")
        raise ValueError(f"text graph: attr {name!r} missing")


_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"]+')


def _parse_text(text: str) -> _Msg:
    tokens = _TOKEN_RE.findall(text)
    stack: list[list[tuple[str, str | _Msg]]] = [[]]
    keys: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "}":
            done = _Msg(stack.pop())
            stack[-1].append((keys.pop(), done))
            i += 1
            continue
        i += 1 if tokens[i + 1] != ":" else 2
        if tokens[i] == "{":
            stack.append([])
            keys.append(tok)
        else:
            value = tokens[i]
            stack[-1].append((tok, value[1:-1] if value.startswith('"') else value))
        i += 1
    return _Msg(stack[0])


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    msg: _Msg


def _read_graph(pbtxt: Path) -> list[_Node]:
    graph = _parse_text(pbtxt.read_text(encoding="utf-8"))
    nodes = []
    for n in graph.subs("node"):
        # control inputs ("^name") carry no data; ":k" picks an output of a node
        inputs = tuple(i.split(":")[0] for i in n.texts("input") if not i.startswith("^"))
        nodes.append(_Node(n.text("name"), n.text("op"), inputs, n))
    return nodes


def _topological(nodes: list[_Node]) -> list[_Node]:
    by_name = {n.name: n for n in nodes}
    pending = {n.name: sum(i in by_name for i in n.inputs) for n in nodes}
    users: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n.name)
    ready = deque(n.name for n in nodes if pending[n.name] == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(by_name[name])
        for user in users.get(name, []):
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(order) != len(nodes):
        raise ValueError("text graph has a cycle")
    return order


# ------------------------------------------------------------ shape inference


@dataclass(frozen=True)
class ConstSpec:
    """One constant: ``fill + std * normal`` unless ``values`` is given."""

    name: str
    shape: tuple[int, ...]
    std: float = 0.0
    fill: float = 0.0
    values: tuple[float, ...] | None = None
    is_int: bool = False


def _scope(weight: str) -> str:
    return weight.rsplit("/", 1)[0]


def _kernel(scope: str) -> int | None:
    """Square kernel size from a TF-slim layer name such as ``Conv2d_0b_3x3``."""
    m = _KERNEL_RE.search(scope)
    return int(m.group(1)) if m else None


def infer_constants(pbtxt: Path) -> list[ConstSpec]:
    """Derive every constant the text graph needs, sorted by name."""
    nodes = _topological(_read_graph(pbtxt))
    defined = {n.name for n in nodes}
    classes = max(int(n.msg.attr("num_classes").text("i")) for n in nodes if n.op == "DetectionOutput")
    anchors = max(len(n.msg.attr("width").sub("tensor").texts("float_val")) for n in nodes if n.op == "PriorBox")
    heads = {  # scope: (kernel, depth)
        "Conv": (3, _RPN_DEPTH),
        "FirstStageBoxPredictor/BoxEncodingPredictor": (1, 4 * anchors),
        "FirstStageBoxPredictor/ClassPredictor": (1, 2 * anchors),
        "SecondStageBoxPredictor/BoxEncodingPredictor": (0, 4 * classes),
        "SecondStageBoxPredictor/ClassPredictor": (0, classes + 1),
        "SecondStageBoxPredictor/Conv": (3, _MASK_CONV_DEPTH),
        "SecondStageBoxPredictor/Conv_1": (3, classes),
    }
    branch_seen: dict[str, list[str]] = {}

    def width(weight: str) -> int:
        scope = _scope(weight)
        if scope in heads:
            return heads[scope][1]
        m = _SCOPE_RE.search(weight)
        if m is None:
            return _STEM_WIDTHS[scope.rsplit("/", 1)[-1]]
        seen = branch_seen.setdefault(m.group(0), [])
        if scope not in seen:
            seen.append(scope)
        return _MIXED_WIDTHS[m.group(1)][int(m.group(2)[-1])][seen.index(scope)]

    specs: dict[str, ConstSpec] = {}

    def add(spec: ConstSpec) -> None:
        old = specs.setdefault(spec.name, spec)
        if old.shape != spec.shape:
            raise ValueError(f"{spec.name}: shapes {old.shape} and {spec.shape} disagree")

    ch: dict[str, int] = {}
    for n in nodes:
        missing = [i for i in n.inputs if i not in defined]
        c = ch.get(n.inputs[0], 0) if n.inputs else 0
        if n.op == "Placeholder":
            c = int(n.msg.attr("shape").sub("shape").subs("dim")[-1].text("size"))
        elif n.op in ("Mul", "Sub") and missing:
            add(ConstSpec(missing[0], (), values=(_PREPROCESS[missing[0]],)))
        elif n.op == "DepthwiseConv2dNative":
            k = _kernel(_scope(n.inputs[1])) or 1
            add(ConstSpec(n.inputs[1], (k, k, c, _DEPTH_MULTIPLIER), std=(2.0 / (k * k)) ** 0.5))
            c *= _DEPTH_MULTIPLIER
        elif n.op == "Conv2D":
            weight, scope = n.inputs[1], _scope(n.inputs[1])
            k = _kernel(scope) or heads[scope][0]
            if weight.endswith("pointwise_weights"):
                k = 1
            out = width(weight)
            std = (2.0 / (k * k * c)) ** 0.5
            if scope.startswith("FirstStageBoxPredictor"):
                std *= 0.1  # small deltas and logits: proposals stay near anchors
            add(ConstSpec(weight, (k, k, c, out), std=std))
            c = out
        elif n.op == "MatMul":
            weight = n.inputs[1]
            out = width(weight)
            std = (1.0 / c) ** 0.5 * (0.1 if "BoxEncoding" in weight else 1.0)
            add(ConstSpec(weight, (c, out), std=std))
            c = out
        elif n.op == "BiasAdd":
            bias = n.inputs[1]
            values: tuple[float, ...] | None = None
            if bias == "SecondStageBoxPredictor/ClassPredictor/biases":
                values = tuple(_PERSON_LOGIT if j == 1 else 0.0 for j in range(c))
            elif _scope(bias) == "SecondStageBoxPredictor/Conv_1":
                values = tuple(_PERSON_MASK_LOGIT if j == 0 else 0.0 for j in range(c))
            add(ConstSpec(bias, (c,), values=values))
        elif n.op == "FusedBatchNorm":
            gamma, beta, mean, var = n.inputs[1:5]
            add(ConstSpec(gamma, (c,), fill=1.0))
            add(ConstSpec(beta, (c,), std=0.05))
            add(ConstSpec(mean, (c,)))
            add(ConstSpec(var, (c,), fill=1.0))
        elif n.op == "ConcatV2":
            c = sum(ch[i] for i in n.inputs[:-1])
            if missing:
                add(ConstSpec(missing[0], (), values=(3.0,), is_int=True))
        elif missing:
            values = {
                "Mean": (1.0, 2.0),
                "CropAndResize": (float(_CROP_SIZE),) * 2,
                "ResizeBilinear": (float(_MASK_SIZE),) * 2,
                "Transpose": (0.0, 3.0, 1.0, 2.0),
                "Reshape": (-1.0, 1.0, float(c)),
            }[n.op]
            add(ConstSpec(missing[0], (len(values),), values=values, is_int=True))
        ch[n.name] = c
    unresolved = {i for n in nodes for i in n.inputs if i not in defined} - specs.keys()
    if unresolved:
        raise ValueError(f"constants left without a shape: {sorted(unresolved)}")
    return [specs[k] for k in sorted(specs)]


# --------------------------------------------------------------- wire format


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tensor(array: _Array) -> bytes:
    is_int = array.dtype == np.int32
    shape = b"".join(_field_bytes(2, _field_int(1, d)) for d in array.shape)
    out = _field_int(1, _DT_INT32 if is_int else _DT_FLOAT) + _field_bytes(2, shape)
    if array.ndim == 0:  # scalars as TF writes them: packed int_val / float_val
        if is_int:
            return out + _field_bytes(7, _varint(int(array)))
        return out + _field_bytes(5, struct.pack("<f", float(array)))
    return out + _field_bytes(4, array.astype("<i4" if is_int else "<f4").tobytes())


def _const_node(name: str, array: _Array) -> bytes:
    dtype = _DT_INT32 if array.dtype == np.int32 else _DT_FLOAT
    attrs = {"dtype": _field_int(6, dtype), "value": _field_bytes(8, _tensor(array))}
    body = _field_bytes(1, name.encode()) + _field_bytes(2, b"Const")
    for key in sorted(attrs):
        body += _field_bytes(5, _field_bytes(1, key.encode()) + _field_bytes(2, attrs[key]))
    return body


def _materialize(spec: ConstSpec, seed: int) -> _Array:
    if spec.values is not None and spec.is_int:
        return np.asarray(spec.values, dtype=np.int32).reshape(spec.shape)
    if spec.values is not None:
        return np.asarray(spec.values, dtype=np.float32).reshape(spec.shape)
    array = np.full(spec.shape, spec.fill, dtype=np.float32)
    if spec.std:
        digest = hashlib.sha256(spec.name.encode()).digest()
        rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
        array += rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(spec.std)
    return array


def graph_bytes(pbtxt: Path, seed: int = 0) -> bytes:
    """Serialized GraphDef holding every constant of ``pbtxt`` (Const nodes only)."""
    parts = [_field_bytes(1, _const_node(s.name, _materialize(s, seed))) for s in infer_constants(pbtxt)]
    return b"".join(parts)


def write_standin(pbtxt: Path, out: Path, seed: int = 0) -> Path:
    """Write the stand-in weights for ``pbtxt`` to ``out``; same seed, same bytes."""
    out.write_bytes(graph_bytes(pbtxt, seed))
    return out


def ensure_standin(pbtxt: Path, cache_dir: Path, seed: int = 0) -> Path:
    """Return ``cache_dir/frozen_inference_graph.pb``, writing it atomically if missing."""
    target = cache_dir / STANDIN_NAME
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{STANDIN_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(graph_bytes(pbtxt, seed))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: parse ``--pbtxt``, ``--out``, ``--seed`` and write the stand-in."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.maskrcnn_standin", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--pbtxt", type=Path, required=True, help="OpenCV text graph")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .pb")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return write_standin(args.pbtxt, args.out, args.seed)


if __name__ == "__main__":
    written = main()
    print(f"{written}: {written.stat().st_size} bytes, sha256 {hashlib.sha256(written.read_bytes()).hexdigest()}")
