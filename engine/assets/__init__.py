"""The bundled default assets: a portrait, a speech sample and the default generator weights
(see README.md here for sources, licences and how each was made)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).parent
DEFAULT_PORTRAIT = ASSETS_DIR / "portrait.png"  # 512x512 RGB, public domain
SAMPLE_SPEECH = ASSETS_DIR / "speech.wav"  # ~9 s, 16 kHz mono 16-bit, three sentences with pauses
DEFAULT_MOTION = ASSETS_DIR / "motion.safetensors"  # the learned generator, L=4 K=2 (weights.json says how)
FAST_MOTION = ASSETS_DIR / "motion_fast.safetensors"  # the same generator fine-tuned to L=2 K=1 (live presets)
# DEFAULT_MOTION before its RL post-training (rl/, weights.json's "motion" entry says how): still loadable with
# --checkpoint engine/assets/motion_pretrained.safetensors
PRETRAINED_MOTION = ASSETS_DIR / "motion_pretrained.safetensors"
FAST_PRETRAINED_MOTION = ASSETS_DIR / "motion_fast_pretrained.safetensors"  # FAST_MOTION before its RL, likewise
MANIFEST = ASSETS_DIR / "manifest.json"  # how each file was made, with its sha256


def require(path: Path) -> Path:
    """`path` if it exists, else an error that says how to make it."""
    if not path.is_file():
        raise FileNotFoundError(f"bundled asset {path} is missing; regenerate it with "
                                "`python -m engine.assets.make_assets` (needs festival and festvox-us-slt-hts)")
    return path
