"""fsio's folder lock: holders take turns (flock on the folder, per open file description, so two
threads of one process serialise like two processes do), and no lock file is left behind."""

from __future__ import annotations

import threading
import time

from llmcf_core import fsio


def test_locked_dir_serialises_holders_and_leaves_no_file(tmp_path):
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with fsio.locked_dir(tmp_path):
            order.append("first in")
            held.set()
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(10)
    with fsio.locked_dir(tmp_path):  # blocks until the first holder leaves
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert list(tmp_path.iterdir()) == []
