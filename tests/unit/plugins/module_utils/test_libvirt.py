# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, translated


def test_lookups_return_objects_or_none(test_conn):
    assert test_conn.lookup_domain("test").name() == "test"
    assert test_conn.lookup_domain("virtops-test-missing") is None
    assert test_conn.lookup_network("default").name() == "default"
    assert test_conn.lookup_network("virtops-test-missing") is None
    pool = test_conn.lookup_pool("default-pool")
    assert pool is not None
    assert test_conn.lookup_volume(pool, "virtops-test-missing") is None
    assert test_conn.lookup_pool("virtops-test-missing") is None


def test_libvirt_errors_keep_libvirt_text_and_code(test_conn):
    with pytest.raises(LibvirtError) as info:
        test_conn.call("cannot define virtops-test", test_conn.conn.defineXML, "<domain type='test'><name>x</name></domain>")
    assert info.value.msg.startswith("cannot define virtops-test: ")
    assert info.value.code is not None
    assert info.value.details["libvirt_error_code"] == info.value.code


def test_unreachable_uri_is_a_libvirt_error():
    with pytest.raises(LibvirtError, match="cannot connect to libvirt at qemu\\+unix:///system\\?socket=/nonexistent"):
        LibvirtClient.open("qemu+unix:///system?socket=/nonexistent/virtops.sock")


def test_a_pool_is_refreshed_once_per_connection(test_conn):
    calls = []

    class Pool:
        def refresh(self, flags):
            calls.append(flags)

    pool = Pool()
    for _entry in range(3):
        test_conn.refresh_pool(pool, "virtops-test-pool")
    test_conn.refresh_pool(Pool(), "virtops-test-other")
    assert calls == [0, 0]


def test_translated_passes_other_errors_through():
    with pytest.raises(KeyError), translated("anything"):
        raise KeyError("not libvirt")


def test_close_is_idempotent(test_conn):
    test_conn.close()
    test_conn.close()
    assert test_conn.conn is None
