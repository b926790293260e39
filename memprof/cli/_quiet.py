"""Keep PyTorch's profiler chatter off the user's terminal, and everything else on it.

NOTE [ Profiler chatter on stderr ]
A measured CPU step runs under ``torch.profiler`` (to see every allocation), and kineto, the
profiler's C++ library, writes straight to file descriptor 2 when a profile starts and stops::

    USDT:2026-12-01 21:26:47 7344:7344 SyncActivityProfilerHandler.cpp:46] profiler_stop
    ERROR:2026-12-01 21:26:47 7344:7344 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35

The second is kineto probing for a GPU on a machine without one: harmless, but a user reads
"ERROR". Python-level redirection cannot catch a C++ write, so while a verb runs, fd 2 is a
pipe and a thread copies every line back to the real stderr except lines matching exactly
these two patterns (:data:`CHATTER`); every other line, Python's or C++'s, passes unchanged
and in order. Set ``MEMPROF_SHOW_PROFILER_LOG=1`` to see everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

__all__ = ["CHATTER", "filtered_stderr"]

#: kineto's lines that say nothing to a memprof user (NOTE [ Profiler chatter on stderr ])
CHATTER = re.compile(
    rb"^(?:USDT:.*\] profiler_(?:start|stop)\s*$|ERROR:.*\] gpuGetDeviceCount failed with code \d+\s*$)")


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern[bytes] = CHATTER) -> Iterator[None]:
    """Drop stderr lines matching ``pattern`` at the file-descriptor level while the block runs."""
    if os.environ.get("MEMPROF_SHOW_PROFILER_LOG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no fd 2 to filter (closed, or a sandbox): run unfiltered
        yield
        return
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as src:
            while chunk := src.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not pattern.match(line):
                        os.write(saved, line + b"\n")
        if pending and not pattern.match(pending):
            os.write(saved, pending)

    thread = threading.Thread(target=pump, name="memprof-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        thread.join()
        os.close(saved)
