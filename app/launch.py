"""`kvsim app`: run the explorer with Streamlit, on this machine only unless asked otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kvsim.cli import _Parser
from kvsim.cliargs import whole


def main(cmd: str, argv: list[str]) -> int:
    p = _Parser(prog="kvsim app", description="Open the Streamlit what-if explorer in a browser.",
                epilog="Arguments after -- go to `streamlit run` unchanged (streamlit run --help lists them).")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the explorer to the network")
    p.add_argument("--port", type=whole("--port", 1, 65535), default=8501, help="port to listen on")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    own, _, extra = (argv[:argv.index("--")], None, argv[argv.index("--") + 1:]) if "--" in argv else (argv, None, [])
    a = p.parse_args(own)
    page = Path(__file__).with_name("streamlit_app.py")
    return subprocess.call([sys.executable, "-m", "streamlit", "run", str(page),
                            "--server.address", a.address, "--server.port", str(a.port),
                            *(["--server.headless", "true"] if a.no_browser else []), *extra])
