"""Paths the Python tests share: the repository, the build whose binaries they drive
($SWIFTKV_BUILD_DIR, default build/release), the swiftkv binary, the default model and the shared data."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("SWIFTKV_BUILD_DIR", ROOT / "build" / "release"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
SWIFTKV = BUILD / "tools" / "swiftkv"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = ROOT.parent / "shared" / "data"
