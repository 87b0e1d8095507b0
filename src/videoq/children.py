"""Child processes that die with the process that started them, however it ends (SIGKILL and
an out-of-memory kill included): no FFmpeg keeps running for a worker that is gone, no test or
benchmark worker outlives the run that started it.

Every child videoq starts (FFmpeg and ffprobe, the processes of ``videoq dev``, the embedded
Redis, the test and benchmark helpers) is started with ``preexec_fn=preexec()``, by
:func:`subprocess.Popen` or :func:`asyncio.create_subprocess_exec` alike.

On Linux the child asks the kernel for SIGKILL when its parent goes
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``, between fork and exec). Two caveats, both of the kernel:

- The signal comes when the *thread* that forked the child ends, not the process. Start
  children from a thread that lives as long as they must: the event loop's (asyncio starts
  them there), or the main thread; never from a short-lived worker thread.
- A parent that died before the child made the request would never signal it: the child
  checks that its parent is still the process that started it, and kills itself otherwise.

Elsewhere (macOS, Windows) there is no such request: :func:`preexec` is None, and a child is
stopped only by the code that started it (as :func:`videoq.ffmpeg.run_ffmpeg` does on
cancellation, timeout and error), not when its parent is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

#: ``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1


#: libc's ``prctl`` on Linux, looked up once here: a child between fork and exec loads nothing.
_PRCTL: Callable[..., int] | None = (
    ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
)


def preexec() -> Callable[[], None] | None:
    """The ``preexec_fn`` that ties a child to this process: the child is SIGKILLed when the
    thread that starts it ends, which this process ending does too. Made for the one child
    and passed inline (``preexec_fn=preexec()``). None where the platform cannot do it (see
    the module's docstring)."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def die_with_parent() -> None:  # runs in the child, after fork, before exec
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            # Surfaces in the parent as subprocess.SubprocessError; no child runs untied.
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request was made
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent
