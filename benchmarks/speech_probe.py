"""Which speech features carry the mouth, measured before training on them: linear probes.

For each candidate (log-mel; the speech encoder's output after 2, 3 or 4 blocks, over a window of
1 s or 2 s ending with a chunk's lookahead, as the streaming generator computes it), a ridge
regression from the features of frames k-1..k+1 to the corpus's jawOpen target of frame k is fitted
on the corpus's train split and scored on its validation split, whose voices were never trained on.
The human recordings are not used: they stay unseen for the evaluation.

    python benchmarks/speech_probe.py --data /work/runs/synth --minutes 20
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.audio.frontend import AudioFeatures
from engine.audio.speech import TOKENS_PER_FRAME, load_speech_encoder
from engine.motion import spec
from engine.motion.generator import silence
from train.dataset import load_clips

CHUNK, LOOKAHEAD = 4, 2  # the quality preset's layout: a frame's right context is 2..5 frames
RIDGE = 10.0


@torch.inference_mode()
def encoder_layers(features: AudioFeatures, window: int) -> list[np.ndarray]:
    """Per frame (T, 2 * 384) tokens after blocks 2, 3 and 4 (+ final norm), chunk by chunk as streamed."""
    enc = load_speech_encoder(4)
    T, L, K = len(features), CHUNK, LOOKAHEAD
    mel = AudioFeatures.concat([silence(window - L - K), features, silence(L + K)]).mel
    outs = [[], [], []]
    for j in range(0, T, L):
        x = enc.stem(torch.from_numpy(mel[j: j + window].reshape(1, -1, mel.shape[-1])))
        hidden = []
        for block in enc.blocks:
            x = block(x)
            hidden.append(x)
        hidden[-1] = enc.norm(hidden[-1])
        first = (window - L - K) * TOKENS_PER_FRAME  # the chunk's L frames
        for out, h in zip(outs, hidden[1:]):
            out.append(h[0, first: first + L * TOKENS_PER_FRAME].reshape(L, -1).numpy())
    return [np.concatenate(o)[:T] for o in outs]


def context(x: np.ndarray) -> np.ndarray:
    """(T, F) -> (T, 3F): frames k-1, k, k+1 (edges repeated)."""
    padded = np.concatenate([x[:1], x, x[-1:]])
    return np.concatenate([padded[:-2], padded[1:-1], padded[2:]], axis=1)


def ridge_r(train: list[tuple[np.ndarray, np.ndarray]], test: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Fit on train (features, target) clips, return the median per-clip Pearson r on test clips."""
    X = np.concatenate([context(x) for x, _ in train]).astype(np.float64)
    y = np.concatenate([t for _, t in train])
    mean, std = X.mean(0), X.std(0) + 1e-6
    Xs = (X - mean) / std
    w = np.linalg.solve(Xs.T @ Xs + RIDGE * len(Xs) / 100 * np.eye(Xs.shape[1]), Xs.T @ (y - y.mean()))
    rs = []
    for x, t in test:
        pred = ((context(x) - mean) / std) @ w
        if t.std() > 1e-6 and pred.std() > 1e-9:
            rs.append(np.corrcoef(pred, t)[0, 1])
    return float(np.median(rs))


def subset(clips, minutes: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(clips))
    out, frames = [], 0
    for i in order:
        if frames >= minutes * 60 * 25:
            break
        out.append(clips[i])
        frames += len(clips[i].motion)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="corpus directory (avatar data synth)")
    parser.add_argument("--minutes", type=float, default=20.0, help="train-split audio to fit on")
    parser.add_argument("--test-minutes", type=float, default=10.0, help="validation-split audio to score on")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speech_probe"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    jaw = spec.index("jawOpen")
    train = subset(load_clips(args.data, "train"), args.minutes, 0)
    test = subset(load_clips(args.data, "val"), args.test_minutes, 1)
    rows = {"log-mel": ridge_r([(c.features.mel.reshape(len(c.motion), -1), c.motion[:, jaw]) for c in train],
                               [(c.features.mel.reshape(len(c.motion), -1), c.motion[:, jaw]) for c in test])}
    for window in (25, 50):
        started = time.perf_counter()
        feats = {id(c): encoder_layers(c.features, window) for c in train + test}
        for i, layers in enumerate((2, 3, 4)):
            pairs = {split: [(feats[id(c)][i], c.motion[:, jaw]) for c in clips]
                     for split, clips in (("train", train), ("test", test))}
            rows[f"encoder {layers} blocks, {window * 40} ms window"] = ridge_r(pairs["train"], pairs["test"])
        print(f"window {window}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    result = {"command": "python benchmarks/speech_probe.py " + shlex.join(argv or sys.argv[1:]),
              "train": f"{args.minutes} min of {args.data} train split (seed 0)",
              "test": f"{args.test_minutes} min of its validation split (held-out voices)",
              "median_r_jawOpen": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"`{result['command']}`", "", f"Fit: {result['train']}; scored: {result['test']}.", "",
             "| features | median r (jawOpen, held-out voices) |", "|---|---|"]
    lines += [f"| {name} | {r:.3f} |" for name, r in rows.items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
