"""`avatar export onnx`: every graph of export.specs to ONNX, checked and validated against torch.

    avatar export onnx --checkpoint engine/assets/motion_fast.safetensors --out out/onnx

Per graph: torch.onnx.export (opset OPSET: TensorRT rejects opset 23's Attention op), onnx.checker,
then ONNX Runtime on random inputs and on real ones (the sample speech streamed through the torch
generator for a few seconds, its cache and next window captured) must match torch within the
graph's tolerance, else ExportMismatch names the graph, output and error. DIR/manifest.json
records the opset, versions, shapes, hashes and the errors each graph met.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from engine.backends.onnxruntime import ort_session
from engine.errors import UserError
from engine.io import sha256_file
from export.runtime import code_digest
from export.specs import GraphSpec, batch_axis, generator_specs, renderer_spec

OPSET = 18


class ExportMismatch(UserError):
    """An exported graph computes something else than torch; the message names graph, output and error."""


def export_graph(spec: GraphSpec, path: Path) -> None:
    """Export one graph (legacy TorchScript exporter: static shapes but the stream batch, stable names) and check it."""
    import onnx

    dummy = spec.dummy()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constants here
        axes = {n: {batch_axis(n): "streams"} for n in (*spec.inputs, *spec.outputs)} if spec.batched else None
        torch.onnx.export(spec.module, tuple(dummy[n] for n in spec.inputs), str(path), input_names=list(spec.inputs),
                          output_names=list(spec.outputs), opset_version=OPSET, dynamo=False, dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def max_error(spec: GraphSpec, session, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |ORT - torch| per output, raising ExportMismatch past the spec's tolerance."""
    expected = spec.reference(inputs)
    got = session.run(list(spec.outputs), {n: v.numpy() for n, v in inputs.items()})
    errors = {}
    for name, want, have in zip(spec.outputs, expected.values(), got, strict=True):
        if want.dtype == bool or want.dtype.kind in "iu":
            if not np.array_equal(want, have):
                raise ExportMismatch(f"graph {spec.name}: output {name} differs from torch (exact values expected)")
            errors[name] = 0.0
            continue
        err = np.abs(have.astype(np.float64) - want)
        bound = spec.atol + spec.rtol * np.abs(want)
        if (err > bound).any():
            raise ExportMismatch(f"graph {spec.name}: output {name} is off by up to {err.max():.2e} "
                                 f"(tolerance {spec.atol:g} + {spec.rtol:g} x |value|)")
        errors[name] = float(err.max())
    return errors


@torch.inference_mode()
def real_inputs(model, options, seconds: float = 3.0) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs the graphs meet in a stream: the sample speech run through the torch generator for
    `seconds`, then its cache and next conditions captured (embed, chunk, denoise, commit)."""
    from engine import assets
    from engine.audio.frontend import extract_features
    from engine.audio.io import load_audio
    from engine.backends.eager import TorchStep
    from engine.motion.generator import StreamingGenerator

    cfg = model.config
    features = extract_features(load_audio(assets.SAMPLE_SPEECH))
    generator = StreamingGenerator(TorchStep(model, options))
    n = int(seconds * 25) // cfg.chunk * cfg.chunk
    for start in range(0, n, cfg.chunk):
        generator.step(features[start: start + cfg.chunk + cfg.lookahead])
    from engine.audio.frontend import AudioFeatures

    chunk = features[n: n + cfg.chunk + cfg.lookahead]
    mel = torch.as_tensor(AudioFeatures.concat([generator.past, chunk]).mel)[None]
    cond = generator.conditions(chunk, "happy")
    cache = dict(zip(("keys", "values", "valid", "pos"), generator.cache, strict=True))
    emb = model.embed(cond)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, cfg.chunk, cfg.motion_dim, generator=g)
    return {
        "speech": {"mel": mel},
        "embed": {"speech": cond.speech, "prosody": cond.prosody, "stats": cond.stats, "audio_on": cond.audio_on,
                  "emotion": cond.emotion, "ref": cond.ref},
        "chunk": {"speech": cond.speech, "prosody": cond.prosody, "stats": cond.stats, "emotion": cond.emotion,
                  "ref": cond.ref, "noise": noise, **cache},
        "denoise": {"x_t": noise, "t": torch.tensor([0.5]), "levels": emb.levels, "static": emb.static, **cache},
        "commit": {"clean": noise.clamp(-1, 1), "levels": emb.levels, "static": emb.static, **cache},
    }


def export_all(checkpoint: Path, out: Path, options, portrait: Path | None = None, size: int = 512,
               renderer: bool = True, progress: bool = True) -> dict:
    """Export, check and validate every graph into `out`; returns (and writes) the manifest."""
    import onnx
    import onnxruntime
    from tqdm import tqdm

    from engine import assets
    from engine.motion.learned import load_generator

    model = load_generator(checkpoint)
    specs = generator_specs(model, options)
    real = real_inputs(model, options)
    if renderer:
        from engine.render.renderer import Renderer

        render = Renderer.from_photo(portrait or assets.DEFAULT_PORTRAIT, size)
        specs.append(renderer_spec(render))
        real["renderer"] = {"coeffs": torch.as_tensor(np.stack([
            np.zeros(specs[-1].inputs["coeffs"].shape[1], np.float32)]))}
    out.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for spec in tqdm(specs, desc="export onnx", unit="graph", disable=not progress):
        started = time.perf_counter()
        path = out / f"{spec.name}.onnx"
        export_graph(spec, path)
        session = ort_session(path)
        errors = {"random": max_error(spec, session, spec.dummy(seed=7)), "real": max_error(spec, session, real[spec.name])}
        if spec.batched:  # three streams in one call, each as torch computes it
            errors["batch 3"] = max_error(spec, session, spec.dummy(seed=8, batch=3))
        graphs[spec.name] = {
            "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "inputs": {n: s.to_json() for n, s in spec.inputs.items()}, "outputs": list(spec.outputs),
            "tolerance": {"atol": spec.atol, "rtol": spec.rtol}, "max_error": errors,
            "export_seconds": round(time.perf_counter() - started, 2),
        }
    manifest = {
        "opset": OPSET, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
        "graph_code_sha256": code_digest(), "config": model.config.to_dict(), "sampler": asdict(options),
        "renderer_size": size if renderer else None,
        "portrait": str(portrait or assets.DEFAULT_PORTRAIT) if renderer else None,
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "graphs": graphs,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from engine import assets
    from engine.motion.learned import LearnedOptions, weights_sampler

    defaults = LearnedOptions()
    parser = argparse.ArgumentParser(
        prog="avatar export onnx",
        description="Export the generator's graphs (embed, denoise, commit, and a whole chunk with its Euler steps "
        "unrolled) and the renderer to ONNX; each is checked with onnx.checker and must match torch on random "
        "and real inputs within its tolerance. Writes DIR/<graph>.onnx and DIR/manifest.json.",
        epilog="Example: avatar export onnx --checkpoint engine/assets/motion_fast.safetensors --out out/onnx",
    )
    parser.add_argument("--checkpoint", type=Path, default=assets.DEFAULT_MOTION,
                        help="generator weights (default: engine/assets/motion.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the .onnx files and manifest.json")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="Euler steps unrolled in the chunk graph")
    parser.add_argument("--guidance-audio", type=float,
                        help="audio guidance baked into the chunk graph (default: the weights' own, "
                        f"{defaults.guidance_audio:g} for pretrained weights)")
    parser.add_argument("--guidance-emotion", type=float, help="emotion guidance (default: the weights' own, "
                        f"{defaults.guidance_emotion:g})")
    parser.add_argument("--portrait", type=Path, help="avatar of the renderer graph (default: the bundled portrait)")
    parser.add_argument("--size", type=int, default=512, help="renderer frame size")
    parser.add_argument("--no-renderer", action="store_true", help="export the generator's graphs only")
    args = parser.parse_args(argv)
    try:
        given = {k: v for k, v in (("guidance_audio", args.guidance_audio), ("guidance_emotion", args.guidance_emotion))
                 if v is not None}
        options = LearnedOptions(steps=args.steps, **weights_sampler(args.checkpoint) | given).sampler()
        manifest = export_all(args.checkpoint, args.out, options, args.portrait, args.size, not args.no_renderer)
    except UserError as err:
        print(f"avatar export onnx: error: {err}", file=sys.stderr)
        return 1
    for name, graph in manifest["graphs"].items():
        worst = max(max(e.values()) for e in graph["max_error"].values())
        print(f"{name}: {graph['file']} ({graph['bytes'] / 1e6:.1f} MB), max |onnx - torch| {worst:.1e}")
    print(f"wrote {args.out}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
