# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_guest_plan filter's own wiring: what it refuses, and that it is the module_utils plan."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.kvm_guest_plan import FilterModule
from ansible_collections.virtops.kvm.plugins.module_utils._kvm_guest_plan import plan_fleet

HOST = {"libvirt": {"guests": {"x86_64": {"machines": ["pc-q35-7.2"], "machine_aliases": {"q35": "pc-q35-7.2"}, "domain_types": ["kvm"]}}}}


def test_the_filter_is_the_plan():
    kvm_guest_plan = FilterModule().filters()["kvm_guest_plan"]
    entries = [{"name": "g", "interfaces": [{"network": "default"}]}]
    assert kvm_guest_plan(entries, host=HOST) == plan_fleet(entries, host=HOST)


@pytest.mark.parametrize(
    "entries, host, message",
    [
        ({"name": "g"}, HOST, "the input must be a list of guests (kvm_guest_list), got dict"),
        ([{"name": "g"}], None, "host must be the host that virtops.kvm.host_info returns"),
    ],
)
def test_the_filter_refuses_what_is_not_a_list_and_a_host(entries, host, message):
    with pytest.raises(AnsibleFilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FilterModule().filters()["kvm_guest_plan"](entries, host=host)
