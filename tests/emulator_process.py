"""`halo-integrator emulator` run as a user runs it, for the tests of its command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

CLI = Path(sys.executable).parent / "halo-integrator"


@contextlib.contextmanager
def emulator_process(state_dir: Path, *options: str) -> Iterator[str]:
    """Start the emulator with ``options`` and yield the config snippet it printed once it
    serves; then stop it with SIGTERM, which it must answer by exiting 0."""
    process = subprocess.Popen(
        [str(CLI), "emulator", "--port", "0", "--state-dir", str(state_dir), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"},
    )
    try:
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("# export HALO_EMULATOR_GDAP_SECRET="):
                break
        yield "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
