#!/usr/bin/env python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lay out a directory like a hypervisor's /sys, /proc, /dev and /etc.

The host modules read every path through HostFS, so pointing their ``root`` here runs the same
code as on a real host, for layouts this machine does not have: two NUMA nodes, 1 GiB pools,
IOMMU groups, an SR-IOV physical function with VFs. Unit tests import :func:`build`;
integration targets run this file as a script (``make_fake_host.py ROOT``).
"""

from __future__ import annotations

import json
import os
import sys

PF = "0000:03:00.0"
VFS = ("0000:03:10.0", "0000:03:10.2")
NIC = "0000:00:19.0"
GPU = "0000:01:00.0"
GPU_AUDIO = "0000:01:00.1"


def _write(root, path, content):
    real = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(real), exist_ok=True)
    with open(real, "w", encoding="utf-8") as handle:
        handle.write(content if content.endswith("\n") or content == "" else content + "\n")


def _link(root, path, target):
    real = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(real), exist_ok=True)
    if os.path.lexists(real):
        os.unlink(real)
    os.symlink(target, real)


def _pci(root, address, vendor, device, pci_class, *, driver=None, group=None, netdev=None):
    base = "/sys/bus/pci/devices/%s" % address
    _write(root, base + "/vendor", "0x" + vendor)
    _write(root, base + "/device", "0x" + device)
    _write(root, base + "/class", pci_class)
    _write(root, base + "/driver_override", "(null)")
    if driver:
        os.makedirs(os.path.join(root, "sys/bus/pci/drivers", driver), exist_ok=True)
        _link(root, base + "/driver", "../../../../bus/pci/drivers/%s" % driver)
    if group is not None:
        _link(root, base + "/iommu_group", "../../../../kernel/iommu_groups/%d" % group)
        _link(root, "/sys/kernel/iommu_groups/%d/devices/%s" % (group, address), "../../../../bus/pci/devices/%s" % address)
    if netdev:
        os.makedirs(os.path.join(root, base.lstrip("/"), "net", netdev), exist_ok=True)


def build(root, nodes=2, sizes_kb=(2048, 1048576), node_pages=None, cpu_flag="vmx"):
    """Create the tree below ``root`` and return a description of what is in it."""
    node_pages = node_pages or {2048: [8, 8], 1048576: [0, 0]}
    cpus_per_node = 2
    cpu_blocks = []
    for cpu in range(nodes * cpus_per_node):
        cpu_blocks.append(
            "processor\t: %d\nvendor_id\t: GenuineIntel\nmodel name\t: Fake Xeon CPU @ 2.00GHz\n"
            "flags\t\t: fpu vme de pse tsc msr pae %s sse sse2\naddress sizes\t: 46 bits physical, 48 bits virtual\n" % (cpu, cpu_flag or "")
        )
    _write(root, "/proc/cpuinfo", "\n".join(cpu_blocks))
    _write(root, "/proc/meminfo", "MemTotal:       %d kB\nMemFree:        %d kB\nHugepagesize:       2048 kB\n" % (nodes * 8388608, nodes * 8000000))
    _write(
        root,
        "/proc/mounts",
        "sysfs /sys sysfs rw 0 0\nhugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
        "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n",
    )
    _write(root, "/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt")

    for node in range(nodes):
        base = "/sys/devices/system/node/node%d" % node
        _write(root, base + "/cpulist", "%d-%d" % (node * cpus_per_node, node * cpus_per_node + cpus_per_node - 1))
        _write(root, base + "/meminfo", "Node %d MemTotal:       8388608 kB\nNode %d MemFree:        8000000 kB\n" % (node, node))
    _write(root, "/sys/devices/system/node/online", "0-%d" % (nodes - 1))
    for size in sizes_kb:
        per_node = node_pages.get(size, [0] * nodes)
        total = sum(per_node)
        base = "/sys/kernel/mm/hugepages/hugepages-%dkB" % size
        for name, value in (
            ("nr_hugepages", total),
            ("free_hugepages", total),
            ("resv_hugepages", 0),
            ("surplus_hugepages", 0),
            ("nr_overcommit_hugepages", 0),
        ):
            _write(root, "%s/%s" % (base, name), str(value))
        for node in range(nodes):
            nbase = "/sys/devices/system/node/node%d/hugepages/hugepages-%dkB" % (node, size)
            for name, value in (("nr_hugepages", per_node[node]), ("free_hugepages", per_node[node]), ("surplus_hugepages", 0)):
                _write(root, "%s/%s" % (nbase, name), str(value))

    # PCI: an onboard NIC (group 0), a GPU with its audio function (group 1), an SR-IOV PF (group 2)
    # with two VFs (groups 3 and 4, one still on igbvf, one on vfio-pci).
    _pci(root, NIC, "8086", "15b8", "0x020000", driver="e1000e", group=0, netdev="eno1")
    _pci(root, GPU, "10de", "1db6", "0x030000", driver="nouveau", group=1)
    _pci(root, GPU_AUDIO, "10de", "10f2", "0x040300", driver="snd_hda_intel", group=1)
    _pci(root, PF, "8086", "10c9", "0x020000", driver="igb", group=2, netdev="enp3s0f0")
    _write(root, "/sys/bus/pci/devices/%s/sriov_totalvfs" % PF, "7")
    _write(root, "/sys/bus/pci/devices/%s/sriov_numvfs" % PF, str(len(VFS)))
    for index, (vf, driver) in enumerate(zip(VFS, ("igbvf", "vfio-pci"))):
        _pci(root, vf, "8086", "10ca", "0x020000", driver=driver, group=3 + index, netdev="enp3s0f0v%d" % index if driver == "igbvf" else None)
        _link(root, "/sys/bus/pci/devices/%s/virtfn%d" % (PF, index), "../%s" % vf)
        _link(root, "/sys/bus/pci/devices/%s/physfn" % vf, "../%s" % PF)
    os.makedirs(os.path.join(root, "sys/class/iommu/dmar0"), exist_ok=True)

    _write(root, "/sys/module/kvm_intel/parameters/nested", "Y")
    _write(root, "/sys/module/kvm/parameters/ignore_msrs", "N")
    _write(root, "/sys/module/apparmor/parameters/enabled", "Y")
    for name, value in (
        ("run", 1),
        ("pages_to_scan", 100),
        ("sleep_millisecs", 20),
        ("merge_across_nodes", 1),
        ("pages_shared", 12),
        ("pages_sharing", 40),
        ("pages_unshared", 3),
        ("pages_volatile", 0),
        ("full_scans", 5),
        ("max_page_sharing", 256),
        ("use_zero_pages", 0),
    ):
        _write(root, "/sys/kernel/mm/ksm/%s" % name, str(value))

    _write(root, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:108:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n")
    _write(root, "/etc/group", "root:x:0:\nkvm:x:108:libvirt-qemu\nlibvirt:x:109:\n")
    _write(root, "/etc/libvirt/qemu.conf", '#user = "root"\n')
    kvm = os.path.join(root, "dev/kvm")
    os.makedirs(os.path.dirname(kvm), exist_ok=True)
    if not os.path.exists(kvm):
        try:
            os.mknod(kvm, 0o20660, os.makedev(10, 232))
            os.chown(kvm, 0, 108)
            os.chmod(kvm, 0o660)
        except (PermissionError, OSError):
            _write(root, "/dev/kvm", "")
    return {"root": root, "nodes": nodes, "pf": PF, "vfs": list(VFS), "nic": NIC, "gpu": [GPU, GPU_AUDIO]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_fake_host.py ROOT")
    print(json.dumps(build(sys.argv[1])))
