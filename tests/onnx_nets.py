"""Tiny ONNX networks with known outputs, standing in for LPIPS / Inception / I3D weights."""
from __future__ import annotations

from pathlib import Path


def _save(path: Path, nodes, inputs, output: str) -> str:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def channel_means(path: Path, video: bool = False) -> str:
    """Features = per-channel means, (N, 3): of images (N,3,H,W) or of clips (N,3,T,H,W)."""
    from onnx import helper

    shape = ["N", 3, 4, 16, 16] if video else ["N", 3, 16, 16]
    return _save(path, [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])],
                 [("x", shape)], "f")


def mean_abs_difference(path: Path) -> str:
    """An "LPIPS" that is the mean absolute difference of its two inputs per image."""
    from onnx import helper

    return _save(path, [helper.make_node("Sub", ["a", "b"], ["d"]), helper.make_node("Abs", ["d"], ["e"]),
                        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1, 2, 3], keepdims=0)],
                 [("a", ["N", 3, "H", "W"]), ("b", ["N", 3, "H", "W"])], "m")
