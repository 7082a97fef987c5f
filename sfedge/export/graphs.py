"""Writing and reading ONNX graphs: the one torch.onnx.export call, and I/O read back from a file.

Exporter choice: the TorchScript exporter (`dynamo=False`) with `dynamic_axes`. On torch 2.13 it
traces CLIP and the SlowFast pooling in well under a second for the tiny model, keeps T symbolic
through Conv / reshape / attention / index_select, and gives the same graph on every run. The dynamo
exporter also works but is several times slower on the 2-core export hosts and needs every
shape constraint spelled out to keep T dynamic through the pooling's reshapes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from .registry import ComponentSpec

_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool", 2: "uint8"}


def export_onnx(module: torch.nn.Module, dummy: torch.Tensor, spec: ComponentSpec, out_dir: Path) -> Path:
    """Export `module` with the spec's I/O names, dynamic axes and opset to out_dir/spec.path, with
    every weight in one external data file `<path>.data` (protobuf caps a graph at 2 GB).

    The exporter writes into a scratch directory first (it may spill tensors of >2 GB models beside
    its output); the graph is then re-saved into out_dir."""
    import onnx

    path = Path(out_dir) / spec.path
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch, torch.no_grad(), warnings.catch_warnings():
        # Expected and harmless here: the TorchScript exporter's deprecation notice, and tracer
        # warnings about Python bools that are constant for this graph (CLIP's 336 px size check,
        # SDPA's is_causal, always False for the vision encoder).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        tmp = os.path.join(scratch, spec.path)
        torch.onnx.export(
            module, (dummy,), tmp, dynamo=False, opset_version=spec.opset,
            input_names=[io.name for io in spec.inputs], output_names=[io.name for io in spec.outputs],
            dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
        )
        model = onnx.load(tmp, load_external_data=True)
    _stamp_shapes(model.graph, spec)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=spec.path.rsplit("/", 1)[-1] + ".data", size_threshold=1024)
    return path


def _stamp_shapes(graph, spec: ComponentSpec) -> None:
    """Write the spec's shapes into the graph's I/O declarations: the TorchScript exporter's shape
    inference loses static dims behind dynamic ones (576 becomes 'Addfeatures_dim_1'). Runtime
    shapes are checked by validation; this makes the declared ones say what the graph computes."""
    declared = {v.name: v for v in list(graph.input) + list(graph.output)}
    for io in spec.inputs + spec.outputs:
        dims = declared[io.name].type.tensor_type.shape.dim
        for dim, want in zip(dims, io.shape):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def read_io(path: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a saved graph as [{"name", "dtype", "shape"}], symbolic dims as strings.
    Reads only the graph structure (no external weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def one(v) -> dict:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)), "shape": dims}

    return [one(v) for v in graph.input], [one(v) for v in graph.output]
