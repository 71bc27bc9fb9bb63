# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_guest role's plan (the virtops.kvm.kvm_guest_plan filter, called as fleet.yml calls it) and
its templates, rendered by ansible-playbook itself (the same engine and filters a play uses) from host
facts written here: the parts of the interface the integration target cannot reach on this machine
(SR-IOV VFs, hugepages, hostdevs, virtiofs, UEFI) and the whole-list checks.

The real-libvirtd evidence for the role is the kvm_guest_role integration target and the molecule
scenario; these tests pin down what the templates decide.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from lxml import etree

TEMPLATES = pathlib.Path(__file__).resolve().parents[3] / "roles" / "kvm_guest" / "templates"
DEFAULTS = pathlib.Path(__file__).resolve().parents[3] / "roles" / "kvm_guest" / "defaults" / "main.yml"
VARS = pathlib.Path(__file__).resolve().parents[3] / "roles" / "kvm_guest" / "vars" / "main.yml"

PLAY = """---
- name: Render the role's templates
  hosts: localhost
  gather_facts: false
  vars_files: [{defaults}, {vars}, {case}]
  tasks:
    - name: Plan, as fleet.yml does
      ansible.builtin.set_fact:
        __kvm_guest_guests: "{{{{ __kvm_guest_plan.guests }}}}"
        __kvm_guest_errors: "{{{{ __kvm_guest_plan.errors }}}}"
      vars:
        __kvm_guest_plan: >-
          {{{{ kvm_guest_list | virtops.kvm.kvm_guest_plan(host=__kvm_guest_host_info.host, image_stats=__kvm_guest_image_stat.results,
                                                         check_mode=ansible_check_mode, settings=__kvm_guest_settings) }}}}

    # as in the role: the domains are rendered only for a list without errors
    - name: Domains and addresses
      check_mode: false
      ansible.builtin.copy:
        dest: {out}
        mode: "0600"
        content: "{{{{ {{'guests': __kvm_guest_guests, 'errors': __kvm_guest_errors,
                        'domains': (lookup('ansible.builtin.template', 'domains.json.j2') | from_json) if not __kvm_guest_errors else [],
                        'addresses': lookup('ansible.builtin.template', 'addresses.json.j2') | from_json,
                        'volumes': lookup('ansible.builtin.template', 'volumes.json.j2') | from_json,
                        'seeds': lookup('ansible.builtin.template', 'seeds.json.j2') | from_json,
                        'gone': lookup('ansible.builtin.template', 'gone.json.j2') | from_json,
                        'microvms': (lookup('ansible.builtin.template', 'microvms.json.j2') | from_json) if not __kvm_guest_errors else []}} | to_json }}}}"
"""

HOST = {
    "libvirt": {
        "guests": {
            "x86_64": {
                "machines": ["pc-i440fx-7.2", "pc-q35-7.2"],
                "machine_aliases": {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"},
                "domain_types": ["qemu"],
            }
        },
        "libvirt_version": "9.0.0",
    },
    "hugepages": {"pools": {"2048kB": {"total": 64, "free": 40}, "1048576kB": {"total": 0, "free": 0}}},
    "sriov": {"devices": [{"address": "0000:03:00.0", "netdevs": ["enp3s0f0"], "vfs": ["0000:03:10.0", "0000:03:10.2"]}]},
}


def render(tmp_path, guests, *, domains=(), networks=(), pools=None, address_info=None, check=False, host=None, image_stats=None, **extra):
    """Plan and render ``guests`` on a host with these facts; ``host`` replaces HOST, ``image_stats`` the one image's stat."""
    host = dict(host or HOST)
    host["libvirt"] = dict(
        host["libvirt"],
        networks=list(networks) or [{"name": "default", "active": True}],
        pools=pools if pools is not None else [{"name": "default", "active": True}],
    )
    host["domains"] = list(domains)
    case = {
        "kvm_guest_list": guests,
        "kvm_guest_domain_type": "qemu",
        "kvm_guest_user_backend": "slirp",
        "__kvm_guest_host_info": {"host": host},
        "__kvm_guest_image_stat": {"results": image_stats or [{"item": "/srv/base.qcow2", "stat": {"exists": True, "isreg": True}}]},
    }
    if address_info is not None:
        case["__kvm_guest_address_info"] = address_info
    case.update(extra)
    (tmp_path / "case.json").write_text(json.dumps(case), encoding="utf-8")
    out = tmp_path / "out.json"
    play = tmp_path / "play.yml"
    # the role's templates next to the play, where lookup('template') finds them (and the one they include)
    (tmp_path / "templates").symlink_to(TEMPLATES)
    play.write_text(PLAY.format(defaults=DEFAULTS, vars=VARS, case=tmp_path / "case.json", out=out), encoding="utf-8")
    playbook = pathlib.Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run(
        [str(playbook), "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable, str(play)] + (["--check"] if check else []),
        capture_output=True,
        text=True,
        check=False,
        # the collection under test (the role's filter), from the tree these tests run in
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(pathlib.Path(__file__).resolve().parents[6])),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return json.loads(out.read_text(encoding="utf-8"))


def domain_xml(result, name):
    entry = next(entry for entry in result["domains"] if entry["name"] == name)
    return etree.fromstring(entry["xml"].strip().encode())


IMAGE = {"src": "/srv/base.qcow2", "checksum": "sha256:" + "ab" * 32}

# one rendering for the cases that need no special host
BASIC = [
    {"name": "web1", "image": IMAGE, "disk_gib": 10, "disks": [{"size_gib": 2}], "interfaces": [{"network": "default"}], "cloud_init": {"user": "ops"}},
    {"name": "web2", "image": dict(IMAGE, src="http://127.0.0.1:8000/base.qcow2"), "interfaces": [{"user": {"port_forwards": [{"host": 2222, "guest": 22}]}}]},
    {"name": "old", "state": "absent", "image": IMAGE, "disks": [{"size_gib": 1}], "remove_disks": True},
]


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    return render(tmp_path_factory.mktemp("basic"), BASIC)


def test_one_base_volume_per_image_checksum(basic):
    bases = {guest["image"]["volume"] for guest in basic["guests"] if guest["image"]}
    assert bases == {"kvm-guest-base-abababababababab.qcow2"}
    web1 = basic["guests"][0]
    assert web1["root_volume"] == "web1.qcow2" and web1["seed_volume"] == "web1-seed.iso"
    assert [disk["volume"] for disk in web1["disks"]] == ["web1-disk1.qcow2"]
    assert web1["user_data"]["users"][0]["name"] == "ops" and web1["vars"] == {"ansible_user": "ops"}
    assert basic["errors"] == []


def test_one_volume_call_bases_first_then_overlays_then_disks(basic):
    assert basic["volumes"] == [
        {
            "name": "kvm-guest-base-abababababababab.qcow2",
            "upload_from": "/srv/base.qcow2",
            "format": "qcow2",
            "timeout": 60,
            "checksum": "sha256:" + "ab" * 32,
        },
        {"name": "web1.qcow2", "format": "qcow2", "backing_store": "kvm-guest-base-abababababababab.qcow2", "capacity": "10GiB"},
        {"name": "web2.qcow2", "format": "qcow2", "backing_store": "kvm-guest-base-abababababababab.qcow2"},
        {"name": "web1-disk1.qcow2", "capacity": "2GiB", "format": "qcow2"},
    ]
    assert [seed["volume"] for seed in basic["seeds"]] == ["web1-seed.iso", "web2-seed.iso"]
    assert basic["seeds"][1]["meta_data"] == {"instance-id": "web2", "local-hostname": "web2"}
    # a removed guest leaves its overlay, its disk (remove_disks) and its seed; the base stays
    assert basic["gone"] == {"volumes": [{"name": "old.qcow2"}, {"name": "old-disk1.qcow2"}], "seeds": [{"volume": "old-seed.iso"}]}


def test_a_disk_the_running_guest_has_is_not_attached_again(tmp_path):
    have = '<domain><devices><disk type=\'volume\'><source pool="default" volume="g-disk1.qcow2"/></disk></devices></domain>'
    guests = [{"name": "g", "disks": [{"size_gib": 1}, {"size_gib": 1}]}]
    result = render(tmp_path, guests, domains=[{"name": "g", "state": "running", "xml": have}])
    assert [disk["attached"] for disk in result["guests"][0]["disks"]] == [True, False]


def test_domains_batch_keeps_order_and_removes_absent(basic):
    assert [(entry["name"], entry["state"]) for entry in basic["domains"]] == [("web1", "running"), ("web2", "running"), ("old", "absent")]
    assert "xml" not in basic["domains"][2]


def test_seed_is_a_readonly_virtio_disk_and_slirp_nic_has_a_fixed_slot(basic):
    xml = domain_xml(basic, "web1")
    seed = xml.find("devices/disk/source[@volume='web1-seed.iso']/..")
    assert seed.find("target").get("bus") == "virtio" and seed.find("readonly") is not None
    args = [arg.get("value") for arg in domain_xml(basic, "web2").iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert args[1].startswith("user,id=virtops-user0,hostfwd=tcp:127.0.0.1:2222-:22")
    assert ",bus=pcie.0,addr=0x18" in args[3]
    # the inventory record the inventory plugin reads
    record = domain_xml(basic, "web2").find("metadata/{https://virtops.dev/kvm/inventory/1}inventory")
    assert record.find("{https://virtops.dev/kvm/inventory/1}port-forward").get("host") == "2222"


def test_addresses_prefer_the_port_forward_and_skip_link_local(tmp_path):
    leases = {
        "domains": [
            {"name": "a", "interfaces": [{"addresses": [{"address": "fe80::1", "family": "ipv6"}, {"address": "169.254.3.4", "family": "ipv4"}]}]},
            {"name": "b", "interfaces": [{"addresses": [{"address": "fd00::5", "family": "ipv6"}, {"address": "192.168.122.9", "family": "ipv4"}]}]},
        ]
    }
    guests = [
        {"name": "a", "interfaces": [{"network": "default"}]},
        {"name": "b", "interfaces": [{"network": "default"}]},
        {"name": "c", "interfaces": [{"network": "default"}, {"user": {"port_forwards": [{"host": 2200, "guest": 22}]}}]},
    ]
    result = render(tmp_path, guests, address_info=leases)
    assert result["addresses"]["reach"] == {"b": {"host": "192.168.122.9", "port": 22}, "c": {"host": "127.0.0.1", "port": 2200}}
    assert result["addresses"]["missing"] == ["a"]


def test_check_mode_reaches_only_guests_that_run_already(tmp_path):
    # check mode starts nothing: a new guest is neither waited for nor reported missing, a running one is reached
    running = "<domain type='qemu'><name>b</name><devices/></domain>"
    leases = {"domains": [{"name": "b", "interfaces": [{"addresses": [{"address": "192.168.122.9", "family": "ipv4"}]}]}]}
    guests = [
        {"name": "a", "interfaces": [{"network": "default"}]},
        {"name": "b", "interfaces": [{"network": "default"}]},
        {"name": "c", "interfaces": [{"user": {"port_forwards": [{"host": 2200, "guest": 22}]}}]},
    ]
    domains = [{"name": "b", "state": "running", "xml": running}]
    (tmp_path / "check").mkdir()
    (tmp_path / "real").mkdir()
    checked = render(tmp_path / "check", guests, domains=domains, address_info=leases, check=True)
    assert [guest["reachable"] for guest in checked["guests"]] == [False, True, False]
    assert checked["addresses"] == {"reach": {"b": {"host": "192.168.122.9", "port": 22}}, "missing": []}
    real = render(tmp_path / "real", guests, domains=domains, address_info=leases)
    assert [guest["reachable"] for guest in real["guests"]] == [True, True, True]
    assert real["addresses"]["missing"] == ["a"]


def test_sriov_vf_kept_then_a_free_one_then_none_left(tmp_path):
    held = (
        "<domain><devices><interface type='hostdev'><source>"
        "<address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x2'/>"
        "</source></interface></devices></domain>"
    )
    guests = [{"name": name, "interfaces": [{"sriov_pf": pf}]} for name, pf in (("g1", "enp3s0f0"), ("g2", "0000:03:00.0"), ("g3", "enp3s0f0"))]
    result = render(tmp_path, guests, domains=[{"name": "g1", "state": "running", "xml": held}])
    vfs = {guest["name"]: guest["interfaces"][0]["vf"] for guest in result["guests"]}
    assert vfs["g1"] == ["0000", "03", "10", "2"]  # the VF it already holds
    assert vfs["g2"] == ["0000", "03", "10", "0"]  # the free one
    assert vfs["g3"] is None
    assert result["errors"] == ["guest g3: sriov_pf 'enp3s0f0' has no free VF (create more with virtops.kvm.sriov)"]


def test_whole_list_errors_before_anything_changes(tmp_path):
    guests = [
        {"name": "x", "machine": "pc-q35-99.9", "interfaces": [{"network": "nonet"}, {"user": {"port_forwards": [{"host": 2201, "guest": 22}]}}]},
        {"name": "x", "image": {"src": "/nonexistent.qcow2", "checksum": "sha256"}},
        {"name": "y", "memory_mib": 4096, "hugepages": {"size": "2M"}, "interfaces": [{"user": {"port_forwards": [{"host": 2201, "guest": 22}]}}]},
        {"name": "z", "hostdevs": [{"pci": "zz"}], "cpu": {"mode": "custom"}},
    ]
    errors = render(tmp_path, guests, pools=[{"name": "default", "active": False}])["errors"]
    expected = [
        "kvm_guest_pool 'default' is not an active storage pool of this host (active pools: none)",
        "guest x is listed more than once in kvm_guest_list",
        "host port 2201 is forwarded by more than one guest interface",
        "guest x: machine type 'pc-q35-99.9' is not offered by this host's QEMU (x86_64); it offers: pc, pc-i440fx-7.2, pc-q35-7.2, q35",
        "guest x: libvirt has no network 'nonet' (networks: default)",
        "guest x: image /nonexistent.qcow2 does not exist on the hypervisor (or is not a regular file)",
        "guest x: image checksum must look like sha256:<hex digest>, got 'sha256'",
        "guest z: cpu mode custom needs cpu.model",
        'guest z: hostdev {"pci": "zz"} needs pci: DDDD:BB:SS.F or usb: VENDOR:PRODUCT',
        "guests y need 2048 free hugepages of 2048 kB to start, the host has 40 free (of 64); allocate more with virtops.kvm.hugepages or lower memory_mib",
    ]
    assert errors == expected


def test_guests_without_volumes_need_no_pool(tmp_path):
    diskless = [{"name": "pxe", "firmware": "uefi", "wait_for": "none"}]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert render(tmp_path / "a", diskless, pools=[])["errors"] == []
    with_seed = [{"name": "ci", "cloud_init": {"user": "u"}}]
    assert render(tmp_path / "b", with_seed, pools=[])["errors"] == ["kvm_guest_pool 'default' is not an active storage pool of this host (active pools: none)"]


def test_hugepages_virtiofs_uefi_secure_and_hostdevs_render(tmp_path):
    guests = [
        {"name": "hp", "memory_mib": 64, "hugepages": {"size": "2M"}, "firmware": "uefi-secure", "hostdevs": [{"pci": "0000:05:00.1"}, {"usb": "046d:c52b"}]},
        {"name": "fs", "filesystems": [{"source": "/srv/share", "target": "share", "readonly": True}], "cpu": {"mode": "host-model", "topology": {"cores": 2}}},
    ]
    result = render(tmp_path, guests)
    assert result["errors"] == []
    hp = domain_xml(result, "hp")
    assert hp.find("memoryBacking/hugepages/page").get("size") == "2048"
    assert hp.find("os").get("firmware") == "efi" and hp.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "yes"
    assert hp.find("features/smm").get("state") == "on"
    assert hp.find("devices/hostdev[@type='pci']/source/address").attrib == {"domain": "0x0000", "bus": "0x05", "slot": "0x00", "function": "0x1"}
    assert hp.find("devices/hostdev[@type='usb']/source/vendor").get("id") == "0x046d"
    fs = domain_xml(result, "fs")
    assert fs.find("memoryBacking/source").get("type") == "memfd" and fs.find("memoryBacking/access").get("mode") == "shared"
    assert fs.find("devices/filesystem/driver").get("type") == "virtiofs" and fs.find("devices/filesystem/readonly") is not None
    assert fs.find("cpu").get("mode") == "host-model" and fs.find("cpu/topology").get("cores") == "2"


def test_seabios_writes_to_the_serial_console_uefi_needs_nothing(tmp_path):
    result = render(tmp_path, [{"name": "b", "firmware": "bios", "wait_for": "none"}, {"name": "u", "firmware": "uefi", "wait_for": "none"}])
    assert result["errors"] == []
    assert domain_xml(result, "b").find("os/bios").get("useserial") == "yes"
    assert domain_xml(result, "u").find("os/bios") is None


def test_a_running_guest_on_a_pf_that_is_down_is_refused(tmp_path):
    down = dict(HOST, sriov={"devices": [dict(HOST["sriov"]["devices"][0], up=False)]})
    guests = [{"name": "r", "interfaces": [{"sriov_pf": "enp3s0f0"}]}, {"name": "s", "state": "shutdown", "interfaces": [{"sriov_pf": "enp3s0f0"}]}]
    result = render(tmp_path, guests, host=down)
    assert result["errors"] == [
        "guest r: sriov_pf 'enp3s0f0' is down: libvirt gives a VF to a guest as an interface only when its PF is up (virtops.kvm.sriov pf_up: true)"
    ]


# -- machine: microvm (run by virtops.kvm.microvm, not libvirt) --------------------------------------------
MICROVM_STATS = [
    {"item": "/srv/base.qcow2", "stat": {"exists": True, "isreg": True}},
    {"item": "/srv/mvm/vmlinuz", "stat": {"exists": True, "isreg": True}},
    {"item": "/srv/mvm/initrd.img", "stat": {"exists": True, "isreg": True}},
    {"item": "/run/systemd/system", "stat": {"exists": True, "isdir": True}},
]
MICROVM = {"name": "edge", "machine": "microvm", "kernel": "/srv/mvm/vmlinuz", "initrd": "/srv/mvm/initrd.img", "memory_mib": 192}
VOLUME_RESULTS = {
    "results": [
        {"name": "default/kvm-guest-base-abababababababab.qcow2", "volume": {"path": "/pool/kvm-guest-base-abababababababab.qcow2"}},
        {"name": "default/disk.qcow2", "volume": {"path": "/pool/disk.qcow2"}},
        {"name": "default/disk-data.raw", "volume": {"path": "/pool/disk-data.raw"}},
    ]
}


def test_microvm_entries_go_to_the_microvm_module_not_to_libvirt(tmp_path):
    guests = [
        dict(MICROVM, interfaces=[{"user": {"port_forwards": [{"host": 2223, "guest": 22}]}}, {"bridge": "br0", "mac": "52:54:00:AA:BB:CC"}], autostart=True),
        dict(MICROVM, name="disk", image=IMAGE, disks=[{"name": "data", "size_gib": 1, "format": "raw"}], cloud_init={"user": "u"}, state="shutdown"),
        dict(MICROVM, name="hard", state="destroyed", cmdline="console=ttyS0 quiet"),
        {"name": "gone", "machine": "microvm", "state": "absent"},
        {"name": "web", "interfaces": [{"network": "default"}]},
    ]
    seeds = {"results": [{"name": "default/disk-seed.iso", "path": "/pool/disk-seed.iso"}]}
    result = render(tmp_path, guests, image_stats=MICROVM_STATS, __kvm_guest_volume_result=VOLUME_RESULTS, __kvm_guest_seed_result=seeds)
    assert result["errors"] == []
    assert [entry["name"] for entry in result["domains"]] == ["web"]
    by_name = {entry["name"]: entry for entry in result["microvms"]}
    assert list(by_name) == ["edge", "disk", "hard", "gone"]
    edge = by_name["edge"]
    assert (edge["state"], edge["accel"], edge["memory_mib"], edge["vcpus"], edge["enabled"], edge["skip"]) == ("running", ["tcg"], 192, 1, True, False)
    assert edge["kernel"] == "/srv/mvm/vmlinuz" and edge["initrd"] == "/srv/mvm/initrd.img" and edge["cmdline"] is None
    user, bridge = edge["interfaces"]
    assert user["type"] == "user" and user["port_forwards"] == [{"host_port": 2223, "guest_port": 22}]
    assert user["mac"].startswith("52:54:00:")
    assert bridge == {"type": "bridge", "bridge": "br0", "mac": "52:54:00:aa:bb:cc"}
    # the overlay first, then the extra disk, then the seed read-only
    assert by_name["disk"]["disks"] == [
        {"path": "/pool/disk.qcow2", "format": "qcow2"},
        {"path": "/pool/disk-data.raw", "format": "raw"},
        {"path": "/pool/disk-seed.iso", "format": "raw", "readonly": True},
    ]
    assert (by_name["disk"]["state"], by_name["disk"]["force"], by_name["disk"]["shutdown_timeout"]) == ("stopped", False, 120)
    assert (by_name["hard"]["state"], by_name["hard"]["force"], by_name["hard"]["shutdown_timeout"]) == ("stopped", True, 0)
    assert by_name["hard"]["cmdline"] == "console=ttyS0 quiet"
    assert by_name["gone"] == {"name": "gone", "state": "absent", "shutdown_timeout": 120, "skip": False}
    # the console the role waits on is the module's
    assert result["guests"][0]["console_log"] == "/var/lib/virtops-microvm/edge/console.log"
    # the ssh forward makes it reachable and added to the inventory like the other guests
    assert result["addresses"]["reach"]["edge"] == {"host": "127.0.0.1", "port": 2223}


def test_microvm_in_check_mode_without_its_volumes_is_not_run(tmp_path):
    guests = [dict(MICROVM, image=IMAGE, wait_for="none"), dict(MICROVM, name="plain", wait_for="none")]
    result = render(tmp_path, guests, check=True, image_stats=MICROVM_STATS, __kvm_guest_volume_result={"results": []})
    assert [(entry["name"], entry["skip"]) for entry in result["microvms"]] == [("edge", True), ("plain", False)]


def test_microvm_entries_refused_before_anything_changes(tmp_path):
    running = "<domain type='qemu'><name>taken</name><devices/></domain>"
    guests = [
        {"name": "nokernel", "machine": "microvm", "wait_for": "none"},
        dict(MICROVM, name="missing", kernel="/srv/mvm/nope", initrd="relative.img", wait_for="none"),
        dict(
            MICROVM,
            name="fw",
            firmware="uefi",
            hostdevs=[{"pci": "0000:05:00.1"}],
            hugepages={"size": "2M"},
            cpu={"mode": "host-model"},
            filesystems=[{"source": "/srv", "target": "s"}],
            interfaces=[{"network": "default"}, {"sriov_pf": "enp3s0f0"}],
            wait_for="none",
        ),
        dict(MICROVM, name="paused", state="paused", wait_for="none"),
        dict(MICROVM, name="nossh", interfaces=[{"user": {}}]),
        dict(MICROVM, name="taken", wait_for="none"),
        {"name": "lib", "kernel": "/srv/mvm/vmlinuz", "wait_for": "none"},
    ]
    errors = render(tmp_path, guests, domains=[{"name": "taken", "state": "running", "xml": running}], image_stats=MICROVM_STATS)["errors"]
    assert errors[:7] == [
        "guest nokernel: machine microvm boots a kernel directly (no firmware boots the disk): give kernel (and initrd, cmdline)",
        "guest missing: kernel /srv/mvm/nope does not exist on the hypervisor (give the absolute path of a file)",
        "guest missing: initrd relative.img does not exist on the hypervisor (give the absolute path of a file)",
        "guest fw: machine microvm cannot have firmware uefi (microvm boots through qboot, there is no UEFI), hostdevs (microvm has no PCI bus), hugepages, "
        "filesystems, cpu (QEMU picks the CPU model), libvirt network interfaces (a microvm NIC is user networking or a tap on a bridge), "
        "sriov_pf interfaces (a microvm NIC is user networking or a tap on a bridge)",
        "guest paused: state paused is not possible for a microvm guest (a systemd unit runs or does not): use running, shutdown, destroyed or absent",
        "guest nossh: a microvm guest is not on a libvirt network, so its address is not known: wait_for ssh needs a user interface forwarding a host port "
        "to guest port 22 (or wait_for: none, or {console: REGEX})",
        "guest taken: libvirt has a guest of this name: remove it (state: absent, without machine: microvm) before running it as a microvm",
    ]
    assert errors[7].startswith("guest lib: kernel, initrd and cmdline are for machine: microvm guests")


def test_microvm_needs_systemd_on_the_hypervisor(tmp_path):
    stats = [stat for stat in MICROVM_STATS if stat["item"] != "/run/systemd/system"] + [{"item": "/run/systemd/system", "stat": {"exists": False}}]
    errors = render(tmp_path, [dict(MICROVM, wait_for="none")], image_stats=stats)["errors"]
    assert errors == ["guest edge: machine microvm guests run as systemd units and this host's PID 1 is not systemd (/run/systemd/system is missing)"]
