"""A short CPU demonstration of RL post-training: `avatar rl train` on the shipped generator with a small config
(rl/configs/demo.toml), then the held-out reward over the run, per term, as a table and the run's curves.

    python benchmarks/rl_demo.py --data /work/runs/synth --run out/rl_demo

The held-out eval (every eval_every steps, and at step 0 before any update) samples the corpus's val voices with
the engine's own ODE sampler and fixed noise, with the run's EMA weights. Resumable: rerun the same command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import cpu_name, run_benchmark, table

SCRIPT = "benchmarks/rl_demo.py"
ROOT = Path(__file__).resolve().parents[1]
# the held-out diagnostics shown next to the terms: what RL is meant to move
DIAGNOSTICS = ("sync/confidence", "sync/offset_frames", "temporal/mouth_roughness", "temporal/head_roughness",
               "temporal/head_jitter", "target/yaw_std", "target/head_std_logratio", "target/jitter_excess",
               "target/roughness_logratio", "target/closure_opening", "target/tracking_r", "guards/frozen_measure",
               "guards/shaking_measure", "tripped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "rl/configs/demo.toml", help="the run's rl.toml")
    parser.add_argument("--data", type=Path, help="corpus directory (default: the config's)")
    parser.add_argument("--run", type=Path, default=Path("out/rl_demo"), help="the run's output directory")
    parser.add_argument("--steps", type=int, help="steps (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rl_demo",
                        help="results path without suffix (.md, .json, _curves.png)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, command: str) -> dict:
    from rl.grpo import load_config, train

    config = load_config(args.config, data=args.data and str(args.data), out=str(args.run), steps=args.steps)
    start = time.monotonic()
    checkpoint = train(config, progress=True, command=command)
    records = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = [{k.removeprefix("eval/"): v for k, v in r.items() if k.startswith("eval/")} | {"step": r["step"]}
             for r in records if "eval/reward" in r]
    curves = f"{args.out.name}_curves.png"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "curves.png", args.out.parent / curves)
    return {"command": command, "cpu": cpu_name(), "config": asdict(config), "curves": curves,
            "checkpoint": str(checkpoint), "minutes_this_invocation": (time.monotonic() - start) / 60,
            "weights": {k: v for k, v in config.reward.items()}, "eval": evals,
            "train": [{k: v for k, v in r.items()
                       if k in ("step", "reward", "reward_std", "kl", "clipfrac", "loss") or k.startswith("draft/")}
                      for r in records if "reward" in r or "loss" in r]}


def markdown(result: dict) -> str:
    evals = result["eval"]
    terms = sorted(k for k in evals[0] if k.startswith("reward/"))
    keys = ["reward", *terms, *[d for d in DIAGNOSTICS if d in evals[0]]]
    rows = [[e["step"], *(f"{e[k]:.3f}" for k in keys)] for e in evals]
    first, last = evals[0], evals[-1]
    weights = ", ".join(f"{k} x{v.get('weight', 0):g}" for k, v in result["weights"].items())
    lines = [
        "# RL post-training, short CPU demonstration",
        "",
        f"Command: `{result['command']}` on {result['cpu']}; the run's config is in the .json.",
        f"Checkpoint: `{result['checkpoint']}` (an engine checkpoint: `avatar render --checkpoint ...`).",
        "",
        ("Held-out composite reward (val-split voices never trained on, the engine's ODE sampler, fixed noise, EMA "
         "weights), per term (unweighted) and diagnostics; step 0 is the shipped generator before any update:"),
        "",
        *table(["step", *keys], rows),
        "",
        f"Held-out reward {first['reward']:.3f} -> {last['reward']:.3f} over {last['step']} steps (weights {weights}).",
        "",
        f"![curves]({result['curves']})",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_benchmark("rl_demo", SCRIPT, argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
