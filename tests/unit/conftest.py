# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures: a fake host tree and a libvirt test:///default connection."""

from __future__ import annotations

import pathlib
import sys

import pytest

FAKEHOST = pathlib.Path(__file__).resolve().parents[1] / "integration" / "targets" / "setup_fakehost" / "files"
sys.path.insert(0, str(FAKEHOST))

import make_fake_host  # pylint: disable=wrong-import-position


@pytest.fixture
def fakehost(tmp_path):
    """A directory laid out like a two-node hypervisor; returns the description dict."""
    return make_fake_host.build(str(tmp_path / "host"))


@pytest.fixture
def test_conn():
    """A LibvirtClient on libvirt's built-in test driver, its guest "test" running as the driver starts it.

    test:///default keeps one in-memory host per process for as long as any connection to it is open,
    so a connection some object still holds carries one test's changes into the next (whether it does
    depends on garbage collection). The baseline every test expects is restored on both sides.
    """
    from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt

    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    client = LibvirtClient.open("test:///default")
    _baseline(client)
    yield client
    _baseline(client)
    client.close()


def _baseline(client):
    if client.conn is None:  # a test that closed the client itself
        return
    dom = client.lookup_domain("test")
    if dom is not None and not dom.isActive():
        dom.create()
