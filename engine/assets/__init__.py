"""The bundled default assets: a portrait and a speech sample (see README.md here for sources and licences)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).parent
DEFAULT_PORTRAIT = ASSETS_DIR / "portrait.png"  # 512x512 RGB, public domain
SAMPLE_SPEECH = ASSETS_DIR / "speech.wav"  # ~9 s, 16 kHz mono 16-bit, three sentences with pauses
MANIFEST = ASSETS_DIR / "manifest.json"  # how each file was made, with its sha256


def require(path: Path) -> Path:
    """`path` if it exists, else an error that says how to make it."""
    if not path.is_file():
        raise FileNotFoundError(f"bundled asset {path} is missing; regenerate it with "
                                "`python -m engine.assets.make_assets` (needs festival and festvox-us-slt-hts)")
    return path
