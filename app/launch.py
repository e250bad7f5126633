"""`kvsim app`: run the explorer with Streamlit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(cmd: str, argv: list[str]) -> int:
    page = Path(__file__).with_name("streamlit_app.py")
    return subprocess.call([sys.executable, "-m", "streamlit", "run", str(page), *argv])
