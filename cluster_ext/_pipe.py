"""PipeReader: a worker's stdout or stderr in the primary (settings silent or
stdio 'pipe'): emits 'data'(bytes), then 'end' and 'close' at EOF."""
from __future__ import annotations

import os

from . import _core
from .events import EventEmitter

CHUNK = 64 * 1024


class PipeReader(EventEmitter):
    def __init__(self, fd: int) -> None:
        super().__init__()
        os.set_blocking(fd, False)
        self._fd = fd
        self._watch = _core.watch_fd(fd, _core.EPOLLIN, self._readable)

    def fileno(self) -> int:
        return self._fd

    def _readable(self, events: int) -> None:
        try:
            data = os.read(self._fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close()
            self.emit("error", exc)
            return
        if data:
            self.emit("data", data)
            return
        self._close()
        self.emit("end")
        self.emit("close")

    def _close(self) -> None:
        self._watch.cancel()
        os.close(self._fd)
        self._fd = -1

    def _forget(self) -> None:
        """In a child of fork(): the fd is the parent's; the watch is gone."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
