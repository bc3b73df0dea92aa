"""`avatar export tensorrt`: TensorRT engines from the graphs of `avatar export onnx` (DESIGN.md §9).

    avatar export onnx --out out/onnx && avatar export tensorrt --onnx out/onnx --out out/trt

Build, allocate and infer are separate steps:
- build_engines: ONNX -> OnnxParser -> network -> build_serialized_network -> DIR/<graph>.engine and
  DIR/manifest.json. It uses full TensorRT (`tensorrt`) where installed, else TensorRT-RTX
  (`tensorrt_rtx`, `pip install ".[tensorrt]"`), whose builder runs without a GPU: that is how CI proves
  every graph TensorRT-buildable on a CPU-only machine.
- running them is the tensorrt backend's (engine.backends.tensorrt: TensorRTGraph, TensorRTStep).

Precision: full TensorRT takes BuilderFlag.FP16. TensorRT-RTX networks are strongly typed (no FP16
flag), so --fp16 there converts the ONNX graph to float16 first (onnx_to_fp16), its inputs and outputs
staying as exported. TensorRT-RTX ignores timing caches (its runtime JIT keeps its own cache),
and its engines target SM75-SM121 without Hopper: an H100/H200 needs full TensorRT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.backends.tensorrt import (  # the runtime half lives with the backend that runs the engines
    INSTALL,
    _is_rtx,
    _recording_logger,
    load_tensorrt,
)
from engine.errors import UserError
from engine.io import sha256_file


class OnnxDirError(UserError):
    """The ONNX directory or its manifest cannot be used; the message says what is missing."""


class TensorRTBuildError(UserError):
    """One graph could not become an engine; `graph` names it."""

    def __init__(self, graph: str, message: str):
        super().__init__(f"graph {graph}: {message}")
        self.graph = graph


@dataclass(frozen=True)
class ParserIssue:
    node: int  # index of the ONNX node in its graph (-1: not tied to a node)
    node_name: str
    operator: str
    code: str  # the parser's ErrorCode name, e.g. UNSUPPORTED_NODE
    message: str

    def __str__(self) -> str:
        return f"node {self.node} {self.node_name!r} ({self.operator}): {self.code}: {self.message}"


class OnnxParseError(TensorRTBuildError):
    """TensorRT's ONNX parser refused the graph; `issues` names each node, its operator and the reason."""

    def __init__(self, graph: str, issues: Sequence[ParserIssue]):
        self.issues = tuple(issues)
        lines = "\n  ".join(str(i) for i in self.issues) or "(the parser gave no reason)"
        super().__init__(graph, f"TensorRT's ONNX parser rejected it:\n  {lines}\n"
                         "TensorRT takes standard ONNX ops up to opset 22, no custom domains (DESIGN.md §9).")


class EngineBuildError(TensorRTBuildError):
    """build_serialized_network returned no engine; `log` holds the builder's error lines."""

    def __init__(self, graph: str, log: Sequence[str]):
        self.log = tuple(log)
        lines = "\n  ".join(self.log) or "(the builder logged no error)"
        super().__init__(graph, f"the TensorRT builder produced no engine:\n  {lines}")


def _dtype_name(trt, dtype) -> str:
    return np.dtype(trt.nptype(dtype)).name


# ------------------------------------------------------------------------------------------ build


@dataclass(frozen=True)
class OnnxGraph:
    name: str
    path: Path
    inputs: dict[str, list[int]]  # shapes from the export manifest (empty without one)


def find_graphs(onnx_dir: Path) -> tuple[list[OnnxGraph], dict]:
    """The graphs to build (from onnx_dir/manifest.json, else every *.onnx) and the export manifest."""
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise OnnxDirError(f"ONNX directory {onnx_dir} does not exist; make it with "
                           f"`avatar export onnx --out {onnx_dir}`")
    manifest_path = onnx_dir / "manifest.json"
    if not manifest_path.exists():
        graphs = [OnnxGraph(p.stem, p, {}) for p in sorted(onnx_dir.glob("*.onnx"))]
        if not graphs:
            raise OnnxDirError(f"{onnx_dir} has no manifest.json and no .onnx files; make them with "
                               f"`avatar export onnx --out {onnx_dir}`")
        return graphs, {}
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["graphs"]
        graphs = [OnnxGraph(name, onnx_dir / entry["file"],
                            {n: list(s["shape"]) for n, s in entry.get("inputs", {}).items()})
                  for name, entry in entries.items()]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise OnnxDirError(f"{manifest_path} is not an export manifest ({type(err).__name__}: {err}); "
                           "rerun `avatar export onnx`") from err
    if not graphs:
        raise OnnxDirError(f"{manifest_path} lists no graphs; rerun `avatar export onnx`")
    if missing := [str(g.path) for g in graphs if not g.path.is_file()]:
        raise OnnxDirError(f"{manifest_path} lists graphs whose files are missing: {', '.join(missing)}; "
                           "rerun `avatar export onnx`")
    return graphs, manifest


def _parse(trt, builder, logger, graph: OnnxGraph, fp16_onnx: bool):
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if fp16_onnx:
        try:
            model = _onnx_to_fp16(graph.path)
        except ValueError as err:
            raise TensorRTBuildError(graph.name, str(err)) from err
        ok = parser.parse(model, str(graph.path))
    else:
        ok = parser.parse_from_file(str(graph.path))
    if not ok:
        issues = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            issues.append(ParserIssue(e.node(), e.node_name(), e.node_operator(), e.code().name, e.desc()))
        raise OnnxParseError(graph.name, issues)
    return network, parser  # the parser owns weights the network points at: keep it alive until built


# Ops that stay float32 under --fp16 on TensorRT-RTX: their float inputs are coordinates or counts
KEEP_FP32_OPS = frozenset({"Resize", "Upsample", "Range", "TopK", "CumSum", "RoiAlign", "NonMaxSuppression"})


def onnx_to_fp16(model):
    """A float16 copy of an ONNX model for TensorRT-RTX, whose networks are strongly typed (no FP16 flag).

    A node runs in float16 when one of its float inputs is an activation (derived from a float graph input),
    except KEEP_FP32_OPS. Float arithmetic derived only from integers and constants (positions, shape maths
    such as 1 / sqrt(head_dim)) stays float32, so positions past 2048 keep their precision. Casts go in
    where the two meet; weights used in float16 are stored in float16; graph inputs and outputs keep their
    exported types."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ValueError("fp16 conversion does not handle control flow (If/Loop/Scan); export without it")
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types |= {t.name: t.data_type for t in graph.initializer}
    initializers = {t.name: t for t in graph.initializer}
    active = {v.name for v in graph.input if types[v.name] == FLOAT}  # float tensors downstream of float inputs
    half_out: set[str] = set()  # float tensors produced in float16
    casts: dict[tuple[str, int], str] = {}  # (tensor, type) -> name of its cast
    nodes = []

    def as_type(name: str, to: int) -> str:
        """`name` in type `to`, through one shared Cast (or a float16 copy of an initializer)."""
        if (name, to) not in casts:
            new = f"{name}__{'fp16' if to == HALF else 'fp32'}"
            if name in initializers and to == HALF:
                array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                graph.initializer.append(numpy_helper.from_array(array, new))
            else:
                nodes.append(helper.make_node("Cast", [name], [new], name=f"{new}_cast", to=to))
            casts[name, to] = new
        return casts[name, to]

    for node in graph.node:
        floats = [i for i, name in enumerate(node.input) if name and types.get(name) == FLOAT]
        is_active = any(node.input[i] in active for i in floats)
        half = is_active and node.op_type not in KEEP_FP32_OPS
        for i in floats:
            name = node.input[i]
            is_half = name in half_out
            if half and not is_half:
                node.input[i] = as_type(name, HALF)
            elif not half and is_half:
                node.input[i] = as_type(name, FLOAT)
        if half:
            for attribute in node.attribute:  # Cast(to=float), EyeLike(dtype=float), ...
                if attribute.name in ("to", "dtype") and attribute.i == FLOAT:
                    attribute.i = HALF
            half_out.update(o for o in node.output if types.get(o) == FLOAT)
        if is_active:
            active.update(node.output)
        nodes.append(node)
    for output in graph.output:  # outputs keep their exported type
        if output.name in half_out:
            inner = f"{output.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_cast", to=FLOAT))
    for name in {n for n, to in casts if to == HALF} & set(initializers):  # weights used in float16 only
        if all(i != name for node in nodes for i in node.input):
            graph.initializer.remove(initializers[name])
    del graph.node[:], graph.value_info[:]
    graph.node.extend(nodes)
    return model


def _onnx_to_fp16(path: Path) -> bytes:
    import onnx

    return onnx_to_fp16(onnx.load(str(path))).SerializeToString()


def _profile(builder, network, graph: OnnxGraph):
    """One optimization profile pinning every dynamic input to its manifest shape (min = opt = max),
    or None when every input is static."""
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if -1 not in tuple(tensor.shape):
            continue
        shape = graph.inputs.get(tensor.name)
        if shape is None or len(shape) != len(tensor.shape) or any(s < 0 for s in shape):
            raise TensorRTBuildError(graph.name, f"input {tensor.name} has dynamic dimensions {tuple(tensor.shape)} "
                                     "and the export manifest gives no static shape for it; export static "
                                     "shapes (export.specs does) or list them in manifest.json")
        profile = profile or builder.create_optimization_profile()
        profile.set_shape(tensor.name, shape, shape, shape)
    return profile


def _io(trt, network, graph: OnnxGraph) -> tuple[dict, dict]:
    """Engine inputs (dynamic ones at their profile shape) and outputs (as TensorRT infers them before
    building: -1 where they follow a dynamic input)."""
    def describe(tensor, pinned: dict) -> dict:
        shape = list(tensor.shape)
        return {"shape": pinned.get(tensor.name, shape) if -1 in shape else shape,
                "dtype": _dtype_name(trt, tensor.dtype)}

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return {t.name: describe(t, graph.inputs) for t in inputs}, {t.name: describe(t, {}) for t in outputs}


class EngineBuilder:
    """One TensorRT builder, precision and timing cache for a series of graphs."""

    def __init__(self, trt, fp16: bool = False, timing_cache: Path | None = None):
        self.trt, self.fp16 = trt, fp16
        self.logger = _recording_logger(trt)
        self.builder = trt.Builder(self.logger)
        self.rtx = _is_rtx(trt)
        # full TensorRT has BuilderFlag.FP16; TensorRT-RTX is strongly typed: convert the ONNX graph instead
        self.fp16_flag = fp16 and hasattr(trt.BuilderFlag, "FP16")
        self.timing_cache_path, self.timing_cache = None, None
        if timing_cache is not None and not self.rtx:  # TensorRT-RTX: timing caches are no-ops
            self.timing_cache_path = Path(timing_cache)
            blob = self.timing_cache_path.read_bytes() if self.timing_cache_path.exists() else b""
            self.timing_cache = self.builder.create_builder_config().create_timing_cache(blob)

    @property
    def precision(self) -> str:
        if not self.fp16:
            return "fp32"
        return "fp16: BuilderFlag.FP16" if self.fp16_flag else "fp16: ONNX converted to float16, inputs/outputs as exported"

    def build(self, graph: OnnxGraph, out_dir: Path) -> dict:
        """Parse, build and write one engine; returns its manifest entry."""
        trt, started = self.trt, time.perf_counter()
        self.logger.errors.clear()
        network, _parser = _parse(trt, self.builder, self.logger, graph, fp16_onnx=self.fp16 and not self.fp16_flag)
        config = self.builder.create_builder_config()
        if self.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        if self.timing_cache is not None:
            config.set_timing_cache(self.timing_cache, ignore_mismatch=False)
        if (profile := _profile(self.builder, network, graph)) is not None:
            config.add_optimization_profile(profile)
        self.logger.errors.clear()  # parse-time noise; the builder's own errors explain a failed build
        serialized = self.builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(graph.name, self.logger.errors)
        path = Path(out_dir) / f"{graph.name}.engine"
        with path.open("wb") as f:
            f.write(serialized)
        inputs, outputs = _io(trt, network, graph)
        return {
            "engine": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "onnx": graph.path.name, "onnx_sha256": sha256_file(graph.path),
            "build_seconds": round(time.perf_counter() - started, 3), "inputs": inputs, "outputs": outputs,
        }

    def save_timing_cache(self) -> Path | None:
        if self.timing_cache is None:
            return None
        self.timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self.timing_cache_path.open("wb") as f:
            f.write(self.timing_cache.serialize())
        return self.timing_cache_path


def build_engines(onnx_dir: Path, out_dir: Path, fp16: bool = False, timing_cache: Path | None = None,
                  progress: bool = True) -> dict:
    """Build an engine for every graph of `onnx_dir` into `out_dir`; returns (and writes) the manifest.

    Stops at the first graph TensorRT refuses (OnnxParseError names its nodes, EngineBuildError carries
    the builder's log). out_dir/manifest.json is written only when every graph built."""
    from tqdm import tqdm

    graphs, source = find_graphs(Path(onnx_dir))
    out_dir = Path(out_dir)
    builder = EngineBuilder(load_tensorrt(), fp16, timing_cache or out_dir / "timing.cache")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # never leave one describing older engines
    built = {}
    bar = tqdm(graphs, desc="export tensorrt", unit="graph", disable=not progress)
    for graph in bar:
        bar.set_postfix_str(graph.name)
        built[graph.name] = entry = builder.build(graph, out_dir)
        if progress:
            bar.write(f"{graph.name}: {entry['engine']} ({entry['bytes'] / 1e6:.1f} MB) "
                      f"in {entry['build_seconds']:.1f} s", file=sys.stderr)
    cache_path = builder.save_timing_cache()
    trt = builder.trt
    manifest = {
        "library": trt.__name__, "version": trt.__version__, "fp16": fp16, "precision": builder.precision,
        "timing_cache": str(cache_path) if cache_path else None,
        "onnx_dir": str(onnx_dir), "opset": source.get("opset"), "graphs": built,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# -------------------------------------------------------------------------------------------- cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avatar export tensorrt",
        description="Build a TensorRT engine for every ONNX graph of `avatar export onnx` (the graphs its\n"
        "manifest.json lists, else every *.onnx in the directory). Uses full TensorRT where installed, else\n"
        "TensorRT-RTX, which builds without a GPU (running the engines needs one). Writes DIR/<graph>.engine\n"
        "and DIR/manifest.json (library, version, precision, per-graph hashes, sizes, build times, I/O).",
        epilog="Example: avatar export onnx --out out/onnx && avatar export tensorrt --onnx out/onnx --out out/trt\n"
        f"Install the builder with: {INSTALL}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--onnx", type=Path, required=True, metavar="DIR", help="directory of `avatar export onnx`")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for engines + manifest.json")
    parser.add_argument("--fp16", action="store_true", help="float16 engines (default float32); TensorRT-RTX: the graph is converted "
                        "to float16 first, integer-derived maths and inputs/outputs staying float32")
    parser.add_argument("--timing-cache", type=Path, metavar="PATH",
                        help="timing cache to reuse and update (default: OUT/timing.cache; TensorRT-RTX has none)")
    args = parser.parse_args(argv)
    try:
        manifest = build_engines(args.onnx, args.out, fp16=args.fp16, timing_cache=args.timing_cache)
    except UserError as err:
        print(f"avatar export tensorrt: error: {err}", file=sys.stderr)
        return 1
    total = sum(g["build_seconds"] for g in manifest["graphs"].values())
    print(f"built {len(manifest['graphs'])} engines with {manifest['library']} {manifest['version']} "
          f"({manifest['precision']}) in {total:.1f} s; wrote {args.out}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
