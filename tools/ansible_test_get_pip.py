"""Installs pip into one of ansible-test's sanity venvs, where ansible-test would run the get-pip script it downloads.

ansible-test creates each sanity test's venv without pip and bootstraps it with a get-pip script from
ci-files.testing.ansible.com, read from its cache when there (ansible/ansible#77304). That host is out of reach here;
`make sanity` puts this file in the cache instead. It takes get-pip's arguments (the pip to install and its options),
installs the Python's own pip (ensurepip), then that pip installs what was asked for from the package index.
"""

import subprocess
import sys

# get-pip's own options; pip install knows neither.
GET_PIP_OPTIONS = ("--no-setuptools", "--no-wheel")

arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_OPTIONS]
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
subprocess.run([sys.executable, "-m", "pip", "install", *arguments], check=True)
