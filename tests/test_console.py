"""The console's progress bars are seen where the user looks: a terminal, a log file, a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

CHILD = "from srtn.console import bar\nb = bar(total=3, desc='slides', unit='slide')\nb.update(3)\nb.close()\n"


def _run_child(stderr: int) -> None:
    """A fresh process drawing one bar to `stderr` (a file descriptor)."""
    proc = subprocess.run([sys.executable, "-c", CHILD], stderr=stderr, stdout=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0


def test_a_bar_shows_on_a_pseudo_terminal_that_reports_no_size():
    """`script`, some CI runners and container consoles give a terminal of 0 x 0: tqdm read it as room for no
    bar and drew nothing (the demo's tiling bars were missing from its log)."""
    master, slave = pty.openpty()  # a new pseudo-terminal has size 0 x 0
    assert os.get_terminal_size(slave).columns == 0
    try:
        _run_child(slave)
        out = b""
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            out += chunk
    finally:
        os.close(slave)
        os.close(master)
    text = out.decode(errors="replace")
    assert "slides: 100%" in text and "3/3" in text


def test_a_bar_in_a_log_file_ends_with_its_final_state(tmp_path):
    log = tmp_path / "job.log"
    with open(log, "wb") as fh:
        _run_child(fh.fileno())
    last = log.read_text().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("slides: 100%") and "3/3" in last
