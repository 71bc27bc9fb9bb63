# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm_host refuses list entries with keys their module lacks, from a list of each module's options in
tasks/configure.yml: that list must be exactly the module's documented options (its own and its doc
fragments' root and uri), or a valid key would be refused or a typo let through."""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml

TOP = pathlib.Path(__file__).resolve().parents[3]
CONFIGURE = yaml.safe_load((TOP / "roles" / "kvm_host" / "tasks" / "configure.yml").read_text(encoding="utf-8"))
ALLOWED = next(task for task in CONFIGURE if "__kvm_host_options" in task.get("vars", {}))["vars"]["__kvm_host_options"]
MODULES = {
    "kvm_host_hugepages": "hugepages",
    "kvm_host_sriov": "sriov",
    "kvm_host_vfio_pci": "vfio_pci",
    "kvm_host_apparmor_local": "apparmor_local",
    "kvm_host_bridges": "bridge",
    "kvm_host_networks": "network",
    "kvm_host_pools": "pool",
    "kvm_host_secrets": "secret",
    "kvm_host_ksm": "ksm",
}


def documented_options(module):
    source = (TOP / "plugins" / "modules" / ("%s.py" % module)).read_text(encoding="utf-8")
    doc = yaml.safe_load(re.search(r'DOCUMENTATION = r?"""(.*?)"""', source, re.S).group(1))
    options = set(doc["options"])
    fragments = doc.get("extends_documentation_fragment", [])
    options |= {"root"} if "virtops.kvm._hostfs" in fragments else set()
    options |= {"uri"} if "virtops.kvm._libvirt" in fragments else set()
    return options


@pytest.mark.parametrize("variable, module", sorted(MODULES.items()))
def test_allowed_keys_are_the_modules_options(variable, module):
    assert set(ALLOWED[variable]) == documented_options(module)


def test_every_list_variable_is_checked():
    assert set(ALLOWED) == set(MODULES)
