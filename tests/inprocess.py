"""The kvsim CLI in the test's own process (kvsim.cli.main, as the console script calls it): the same code path
as a subprocess without a fresh interpreter importing torch, transformers, pandas and scipy for every call
(2-4 s each on the 2-core VM)."""

import contextlib
import io
from types import SimpleNamespace


def run(*args, cwd="."):
    from kvsim.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
