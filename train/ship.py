"""Ship trained weights as bundled assets, with a manifest saying how they were made.

    python -m train.ship --weights ckpt/motion/motion.safetensors --as motion \
        --eval benchmarks/results/eval_lipsync.json

Copies the checkpoint to engine/assets/<as>.safetensors and records in engine/assets/weights.json:
its sha256 and size, the provenance stored inside it (training options, seed, steps, losses, the
corpus manifest it was trained on and that manifest's own command, voices and hours), the commands
that reproduce it, and the evaluation summary when --eval is given. Each shipped name keeps one entry.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine import assets
from engine.errors import UserError
from engine.io import sha256_file
from engine.io.checkpoint import read_metadata

WEIGHTS_MANIFEST = assets.ASSETS_DIR / "weights.json"
MAX_MB = 30  # shipped weights stay small: the repo is cloned by every CI run


def _corpus(provenance: dict, shipped: dict) -> dict:
    """What the corpus manifest named in the checkpoint says about itself, if the file there is still the one
    trained on (its sha256); else what an entry already in `shipped` recorded of that same manifest, or a note."""
    path, recorded = Path(provenance.get("data", "")), provenance.get("data_sha256")
    if path.is_file() and (not recorded or sha256_file(path) == recorded):
        manifest = json.loads(path.read_text())
        return {"command": manifest.get("command"), "seed": manifest.get("seed"),
                "hours": manifest.get("hours_written"), "voices": manifest.get("voices"),
                "holdout": manifest.get("holdout"), "manifest_sha256": recorded}
    earlier = next((e["corpus"] for e in shipped.values() if recorded and "command" in e.get("corpus", {})
                    and e["corpus"].get("manifest_sha256") == recorded), None)
    if earlier:
        return earlier
    there = f"holds another build (sha256 {sha256_file(path)[:12]})" if path.is_file() else "is gone"
    return {"manifest": str(path), "manifest_sha256": recorded, "note": f"the corpus manifest {there} when shipping"}


def ship(weights: Path, name: str, commands: Sequence[str], evaluation: Path | None = None) -> dict:
    config, provenance = read_metadata(weights)
    size_mb = weights.stat().st_size / 1e6
    if size_mb > MAX_MB:
        raise UserError(f"{weights} is {size_mb:.1f} MB; shipped weights must stay under {MAX_MB} MB")
    target = assets.ASSETS_DIR / f"{name}.safetensors"
    shutil.copyfile(weights, target)
    manifest = json.loads(WEIGHTS_MANIFEST.read_text()) if WEIGHTS_MANIFEST.is_file() else {}
    entry = {
        "file": target.name, "sha256": sha256_file(target), "megabytes": round(size_mb, 2), "config": config,
        "provenance": provenance, "corpus": _corpus(provenance, manifest), "commands": list(commands),
        "shipped": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if evaluation is not None:
        report = json.loads(evaluation.read_text())
        if "sections" in report:  # avatar eval lipsync --out
            entry["evaluation"] = {"command": report["command"],
                                   **{title: s["summary"] for title, s in report["sections"].items()}}
        else:  # benchmarks/rl_eval.py: RL weights against their base
            entry["evaluation"] = {k: report[k] for k in ("command", "audio_dir", "summary", "targets")}
    manifest[name] = entry
    WEIGHTS_MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="checkpoint written by a training command")
    parser.add_argument("--as", dest="name", required=True,
                        choices=("motion", "motion_fast", "motion_pretrained", "motion_fast_pretrained", "sync_expert"),
                        help="shipped name: motion (the default generator), motion_fast (the live presets'), "
                             "motion_pretrained or motion_fast_pretrained (each before RL post-training) or "
                             "sync_expert")
    parser.add_argument("--command", action="append", default=[], dest="commands",
                        help="a command that reproduces it, in order (repeat the flag)")
    parser.add_argument("--eval", type=Path, help="JSON written by `avatar eval lipsync --out` or "
                        "benchmarks/rl_eval.py")
    args = parser.parse_args(argv)
    try:
        entry = ship(args.weights, args.name, args.commands, args.eval)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"shipped {entry['file']} ({entry['megabytes']} MB, sha256 {entry['sha256'][:12]}) -> {WEIGHTS_MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
