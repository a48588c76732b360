#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a supervisord runs and the states of the processes named: supervisorctl's pid and status in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: supervisord_info
short_description: Whether a supervisord runs, its pid, and the states of the processes named
description:
  - Reads what C(supervisorctl pid) and C(supervisorctl status <name>...) print, through supervisord's XML-RPC
    interface on its Unix socket (supervisor's own C(SupervisorTransport)) in one module call, where each
    supervisorctl command costs a Python start-up (about 0.15 s).
  - Changes nothing. A supervisord that is not there (no socket, or a stale socket file, which refuses the
    connection) or that is shutting down is reported as not running, as C(supervisorctl pid) exits non-zero then.
    Any other failure to reach it (a permission, an answer that is not supervisord's) fails the module with the
    reason.
options:
  socket:
    description: supervisord's Unix socket (the C(file) of its C([unix_http_server]) section).
    type: path
    required: true
  names:
    description:
      - The processes to report, named as supervisorctl names them (supervisor/options.py, C(split_namespec)).
      - C(<program>) for the process of a program, C(<group>:*) for every process of a group, C(<group>:<process>)
        for one. No name reports no process (C(all), or none, do not mean every process as in supervisorctl).
    type: list
    elements: str
    default: []
requirements: [supervisor (in the Python that runs the module)]
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Ask supervisord about the runner's programs
  saasodoo.platform.supervisord_info:
    socket: /var/lib/saasodoo/runner/supervisor.sock
    names: [webhook-runner-web, "webhook-runner-worker:*"]
  register: runner_supervisor
"""

RETURN = r"""
running:
  description: Whether supervisord answered on the socket.
  returned: always
  type: bool
pid:
  description: supervisord's pid; null when it does not run.
  returned: always
  type: int
processes:
  description:
    - Each process the names select, in their order, as C(supervisorctl status) shows it (C(<group>:<process>),
      or the process's name when it is its group's), with supervisord's state name.
    - A name supervisord does not know is listed as it was given, with state null.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: webhook-runner-web, state: RUNNING}
    - {name: "webhook-runner-worker:webhook-runner-worker-1", state: FATAL}
not_running:
  description:
    - The names among I(processes) that are STOPPED, EXITED, FATAL or UNKNOWN, or not known to supervisord, those
      for which C(supervisorctl status) exits non-zero (a process STOPPING is not among them); all the names when
      supervisord does not run.
  returned: always
  type: list
  elements: str
"""

import xmlrpc.client

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.supervisor import (
    STOPPED_STATES,
    Faults,
    SupervisorTransport,
    supervisor_api,
)


def select(infos: list[dict], names: list[str]) -> list[dict]:
    """The processes `names` select from getAllProcessInfo's answer, as supervisorctl's status selects them
    (supervisor/supervisorctl.py, do_status, with split_namespec: `group:*` or `group:` is the whole group, a bare
    name the process of that name in the group of that name)."""
    selected = []
    for name in names:
        group, _colon, process = name.partition(":") if ":" in name else (name, "", name)
        matches = [info for info in infos if info["group"] == group and process in ("", "*", info["name"])]
        selected += [
            {"name": info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}",
             "state": info["statename"]}
            for info in matches
        ] or [{"name": name, "state": None}]  # fmt: skip
    return selected


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            names=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    if SupervisorTransport is None:
        module.fail_json(msg=missing_required_lib("supervisor"))
    socket, names = module.params["socket"], module.params["names"]
    api = supervisor_api(socket)
    try:
        pid = api.getPID()
        infos = api.getAllProcessInfo() if names else []
    except (FileNotFoundError, ConnectionRefusedError):  # not started, or gone and its socket file left
        pid, infos = None, []
    except xmlrpc.client.Fault as fault:
        if fault.faultCode != Faults.SHUTDOWN_STATE:
            module.fail_json(msg=f"supervisord on {socket} refused: {fault.faultString}")
        pid, infos = None, []
    except Exception as error:  # a permission, a socket that is not supervisord's: say so, decide nothing
        module.fail_json(msg=f"supervisord on {socket} does not answer as it should: {error!r}")
    processes = select(infos, names)
    module.exit_json(
        changed=False,
        running=pid is not None,
        pid=pid,
        processes=processes,
        not_running=[process["name"] for process in processes if process["state"] in (*STOPPED_STATES, None)],
    )


if __name__ == "__main__":
    main()
