"""Importing OpenVINO and NNCF with their telemetry off.

OpenVINO's model converter and NNCF report usage to Google Analytics through
the `openvino_telemetry` package. Both create it with the opt-in dialog off,
which means *consent is assumed* when `~/intel/openvino_telemetry` does not
exist: importing NNCF writes a client id (`~/intel/openvino_ga_cid`) and a
usage counter (`~/intel/stats`), and quantising sends events. Intel's own
`opt_in_out --opt_out` is no way out either: it sends one "declined" event.

endofuse never lets that package load: before the first `import openvino` or
`import nncf` it puts `None` into `sys.modules["openvino_telemetry"]`, so the
import raises ImportError and both libraries take the fallback they ship for
"package not installed" (no-op stubs: no files, no threads, no network). If the
package was imported before endofuse got the chance (the user imported NNCF
first), its consent check is made to answer "declined" and its sender drops
every message. Nothing is written to the user's home directory either way.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading

from endofuse.errors import EndofuseError

TELEMETRY_MODULE = "openvino_telemetry"


def disable_telemetry() -> None:
    """Makes sure OpenVINO/NNCF telemetry can neither record nor send anything in this process."""
    if TELEMETRY_MODULE not in sys.modules:
        sys.modules[TELEMETRY_MODULE] = None  # `import openvino_telemetry` now raises ImportError
        return
    if sys.modules[TELEMETRY_MODULE] is None:
        return
    # Imported already (by the user's code): neutralise it in place.
    from openvino_telemetry.backend import backend_ga, backend_ga4
    from openvino_telemetry.utils import opt_in_checker, sender

    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined
    sender.TelemetrySender.send = lambda self, backend, message: None
    for backend in (backend_ga.GABackend, backend_ga4.GA4Backend):
        backend.send = lambda self, message: None
    instance = getattr(sys.modules[TELEMETRY_MODULE].Telemetry, "_SingletonMetaClass__single_instance", None)
    if instance is not None:
        instance.consent = False


def import_openvino():
    """The `openvino` module, imported with telemetry off."""
    disable_telemetry()
    try:
        import openvino
    except ImportError as exc:
        raise EndofuseError("the OpenVINO engine needs the openvino package (`pip install openvino nncf`, x86-64 or "
                            "64-bit ARM); or use --engine onnxruntime") from exc
    return openvino


_core = None
_core_lock = threading.Lock()


def openvino_core():
    """The process's one `openvino.Core`, made on first use and never freed.

    OpenVINO's CPU plugin gives a thread that compiles a model an alternate signal stack of each Core's own
    and, when that Core is freed, puts back the stack it found. Cores freed in another order than made leave
    the thread on a freed stack: its next signal (Ctrl-C, SIGTERM) kills the process with SIGSEGV instead of
    running the handler. One Core that lives as long as the process frees no stack.
    """
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def import_nncf():
    """The `nncf` module, imported with telemetry off and its logging at warnings and above."""
    disable_telemetry()
    try:
        import nncf
    except ImportError as exc:
        raise EndofuseError("OpenVINO INT8 needs the nncf package (`pip install nncf`); or use --engine openvino "
                            "(bf16 / f32)") from exc

    nncf.set_log_level(logging.ERROR)
    return nncf


@contextlib.contextmanager
def quiet_nncf():
    """NNCF draws progress bars on stderr for every statistics pass; the CLI output stays ours."""
    import io

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield
