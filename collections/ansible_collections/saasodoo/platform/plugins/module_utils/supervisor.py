"""supervisord's XML-RPC interface on its Unix socket, reached as supervisorctl reaches it (supervisor's own
SupervisorTransport, supervisor/xmlrpc.py): a call costs a request, not a Python start-up."""

from __future__ import annotations

import http.client
import xmlrpc.client
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
