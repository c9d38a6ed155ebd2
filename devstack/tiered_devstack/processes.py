"""Small helpers for the local processes: free loopback ports, polling instead of sleeping, stopping."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float = 30,
    interval: float = 0.2,
    what: str = "it",
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """Call ``check`` until it returns something other than None; ``retry_on`` exceptions count as not yet
    (the last one is reported on timeout), others propagate."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except retry_on as error:
            last = error
        else:
            if result is not None:
                return result
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:g} s for {what}" + (f"; last error: {last!r}" if last else ""))


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 10) -> None:
    """Terminate a child process, kill it if it does not exit within `timeout`, and reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
