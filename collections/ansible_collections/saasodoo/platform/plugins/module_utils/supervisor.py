"""supervisord's XML-RPC interface on its Unix socket, reached as supervisorctl reaches it (supervisor's own
SupervisorTransport, supervisor/xmlrpc.py): a call costs a request, not a Python start-up."""

from __future__ import annotations

import http.client
import xmlrpc.client
from collections.abc import Callable
from xml.parsers.expat import ExpatError

try:
    from supervisor.xmlrpc import Faults, SupervisorTransport
except ImportError:  # the module says so with missing_required_lib("supervisor")
    Faults = SupervisorTransport = None

# supervisor/states.py's RUNNING_STATES: a process in one needs no start (startProcess refuses it).
ACTIVE_STATES = ("RUNNING", "STARTING", "BACKOFF")
# supervisor/states.py's STOPPED_STATES: the states for which `supervisorctl status` exits 3 (NOT_RUNNING).
STOPPED_STATES = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")
# What a call raises when supervisord does not answer as it should; a Fault (an xmlrpc.client.Error) is a refusal.
UNANSWERED = (xmlrpc.client.Error, ExpatError, http.client.HTTPException, OSError)


def supervisor_api(socket_path: str):
    """The `supervisor` namespace of the supervisord on `socket_path` (getPID, getAllProcessInfo, startProcess...)."""
    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


class Programs:
    """supervisord's programs through its API, each refusal or silence reported through `fail` (which does not
    return: a module's fail_json)."""

    def __init__(self, socket_path: str, fail: Callable[[str], None]):
        self.api, self.socket_path, self.fail = supervisor_api(socket_path), socket_path, fail

    def call(self, method: str, *args, ok_faults: tuple[int, ...] = ()):
        """A call's answer; None for a fault the caller expects (e.g. NOT_RUNNING)."""
        try:
            return getattr(self.api, method)(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in ok_faults:
                return None
            self.fail(f"supervisord refused {method}{args}: {fault.faultString}")
        except UNANSWERED as error:  # a Fault: above
            self.fail(f"supervisord does not answer as it should on {self.socket_path} ({error}):"
                      " converge the runtime host first (playbooks/site.yml)")  # fmt: skip

    def info(self, program: str) -> dict | None:
        """getProcessInfo's answer for `program`; None when supervisord does not know it."""
        return self.call("getProcessInfo", program, ok_faults=(Faults.BAD_NAME,))
