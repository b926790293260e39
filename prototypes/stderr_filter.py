"""Prototype: drop kineto's profiler chatter from fd 2, pass every other stderr line through.

kineto (C++) writes straight to file descriptor 2, so Python-level redirection cannot catch it:
fd 2 is pointed at a pipe for the duration, and a thread copies lines back to the real stderr
except those matching the chatter patterns.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

CHATTER = re.compile(rb"^(?:USDT:.*(?:profiler_start|profiler_stop)|ERROR:.*gpuGetDeviceCount failed with code \d+)")


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern[bytes] = CHATTER):
    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump() -> None:
        buf = b""
        with os.fdopen(r, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not pattern.match(line):
                        os.write(saved, line + b"\n")
        if buf and not pattern.match(buf):
            os.write(saved, buf)

    t = threading.Thread(target=pump, name="memprof-stderr-filter", daemon=True)
    t.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        t.join()
        os.close(saved)


if __name__ == "__main__":
    import torch

    with filtered_stderr():
        print("python-level stderr line passes", file=sys.stderr)
        os.write(2, b"USDT:2026 x SyncActivityProfilerHandler.cpp:46] profiler_start\n")
        os.write(2, b"ERROR:2026 x DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n")
        os.write(2, b"ERROR: a real error passes\npartial ")
        os.write(2, b"line joined\n")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True):
            torch.ones(10).sum()
    print("after: stderr restored", file=sys.stderr)
