# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The kvm_guest role's plan of a ``kvm_guest_list``: the shared core of the ``kvm_guest_plan`` filter.

:func:`plan_fleet` fills in every default and derived name of every entry (the base volume named by
the image's checksum, the overlay, the disks and their targets, the seed, the interfaces with the
SR-IOV VF a guest already holds or a free one, the cloud-init user-data, the inventory record) and
checks the whole list against the host, before anything changes. It runs on the controller, from
what one ``host_info`` call (gather ``libvirt``, ``hugepages``, ``sriov``, ``domains``) and one
``stat`` loop read; it reads nothing itself.

The role's later steps (volumes, seeds, the domains' XML, addresses, removal) read the guests it
returns; the role fails with the errors before any step changes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

SETTINGS = {
    "default_machine": "q35",
    "default_memory_mib": 1024,
    "default_vcpus": 1,
    "default_user": "debian",
    "apply": "next_boot",
    "pool": "default",
    "inventory_group": "kvm_guests",
    "domain_type": "kvm",
    "wait_timeout": 300,
    "user_backend": "auto",
}
HUGEPAGE_KIB = {"2M": 2048, "1G": 1048576}
DISK_TARGETS = "bcdefghijklmnopqrstuvwxyz"
MICROVM_STATE_DIR = "/var/lib/virtops-microvm"
SYSTEMD_MARKER = "/run/systemd/system"
CHECKSUM_ALGORITHMS = ("sha1", "sha224", "sha256", "sha384", "sha512", "md5")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
MAC = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\Z")
CHECKSUM = re.compile(r"(%s):[0-9A-Fa-f]+\Z" % "|".join(CHECKSUM_ALGORITHMS))
PCI = re.compile(r"([0-9A-Fa-f]{4}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]\Z")
USB = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}\Z")
URL = re.compile(r"https?://")


def _or(value, default):
    """Jinja's ``default(x, true)``: the default for a missing or empty value."""
    return value if value else default


def _int(value):
    """Jinja's ``int``: a number, a numeric string, else 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def _mapping(value):
    return value if isinstance(value, dict) else {}


def _version(text):
    return tuple(_int(part) for part in str(text or "0").split(".")[:3])


def user_backend(settings, host):
    """passt where libvirt takes ``<backend type='passt'/>`` (10.0 and later), else QEMU's slirp."""
    if settings["user_backend"] != "auto":
        return settings["user_backend"]
    return "passt" if _version(_mapping(host.get("libvirt")).get("libvirt_version")) >= (10, 0, 0) else "slirp"


# ---------------------------------------------------------------------------- one entry


@dataclasses.dataclass
class _Context:
    """What every entry's plan reads: the settings, the host, the guests libvirt has, and the VFs given out so far."""

    settings: dict
    host: dict
    domains: dict
    all_xml: str
    user_kind: str
    check_mode: bool
    taken: set


def _base_image(image):
    fmt = _or(image.get("format"), "qcow2")
    checksum = image.get("checksum")
    digest = str(checksum).rsplit(":", maxsplit=1)[-1] if checksum else hashlib.sha1(str(image.get("src") or "").encode()).hexdigest()
    return {"volume": "kvm-guest-base-%s.%s" % (digest[:16].lower(), fmt), "src": image.get("src") or "", "checksum": checksum, "format": fmt}


def _disks(name, entry, pool, current_xml):
    disks = []
    for index, given in enumerate(entry.get("disks") or []):
        disk = _mapping(given)
        fmt = _or(disk.get("format"), "qcow2")
        volume = "%s-%s.%s" % (name, _or(disk.get("name"), "disk%d" % (index + 1)), fmt)
        target = "vd" + DISK_TARGETS[index] if index < len(DISK_TARGETS) else None
        xml = "<disk type='volume' device='disk'><driver name='qemu' type='%s'/><source pool='%s' volume='%s'/><target dev='%s' bus='virtio'/></disk>" % (
            fmt,
            pool,
            volume,
            target,
        )
        attached = re.search(r"<source [^>]*volume=['\"]%s['\"]" % re.escape(volume), current_xml) is not None
        disks.append({"volume": volume, "format": fmt, "size_gib": disk.get("size_gib"), "target": target, "xml": xml, "attached": attached})
    return disks


def _vf_parts(vf):
    return re.findall(r"[0-9a-fA-F]+", vf)


def _vf_pattern(parts):
    return "bus='0x%s' slot='0x%s' function='0x%s'" % (parts[1], parts[2], parts[3])


def _sriov_nic(nic, ctx, current_xml):
    """The VF this guest holds already (its XML names it), else the first VF no guest holds."""
    devices = _mapping(ctx.host.get("sriov")).get("devices") or []
    pf = [d for d in devices if d.get("address") == nic["sriov_pf"]] + [d for d in devices if nic["sriov_pf"] in (d.get("netdevs") or [])]
    vfs = [_vf_parts(vf) for vf in (pf[0].get("vfs") or [])] if pf else []
    vfs = [parts for parts in vfs if len(parts) == 4]
    pick = next((parts for parts in vfs if _vf_pattern(parts) in current_xml), None)
    if pick is None:
        pick = next((parts for parts in vfs if _vf_pattern(parts) not in ctx.all_xml and "%s:%s:%s.%s" % tuple(parts) not in ctx.taken), None)
    if pick is not None:
        ctx.taken.add("%s:%s:%s.%s" % tuple(pick))
    return {"kind": "sriov", "source": nic["sriov_pf"], "pf_found": bool(pf), "pf_up": pf[0].get("up", True) if pf else True, "vf": pick}


def _interfaces(name, entry, ctx, current_xml):
    nics, forwards, slirp = [], [], []
    for index, given in enumerate(entry.get("interfaces") or []):
        nic = _mapping(given)
        mac = nic.get("mac")
        if "network" in nic:
            one = {"kind": "network", "source": nic["network"]}
        elif "bridge" in nic:
            one = {"kind": "bridge", "source": nic["bridge"]}
        elif "sriov_pf" in nic:
            one = _sriov_nic(nic, ctx, current_xml)
        elif "user" in nic:
            user = nic["user"]
            ports = list((user.get("port_forwards") or []) if isinstance(user, dict) else [])
            one = {"kind": ctx.user_kind, "source": "user", "port_forwards": ports}
            forwards += ports
            if ctx.user_kind == "slirp":
                # QEMU's user networking has no MAC of libvirt's choosing that survives a redefinition: one derived from the name
                digest = hashlib.md5(("%s/%d" % (name, index)).encode()).hexdigest()
                mac = mac or "52:54:00:%s:%s:%s" % (digest[0:2], digest[2:4], digest[4:6])
                slirp += [*ports, {}]
        else:
            one = {"kind": "unknown", "source": json.dumps(nic)}
        one.update(mac=mac, model=_or(nic.get("model"), "virtio"), port_forwards=one.get("port_forwards", []))
        nics.append(one)
    return nics, forwards, slirp


def _user_data(name, user, cloud_init):
    if "user_data" in cloud_init:
        return cloud_init["user_data"]
    account = {
        "name": user,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "groups": ["sudo"],
        "ssh_authorized_keys": cloud_init.get("ssh_authorized_keys", []),
        "lock_passwd": "password_hash" not in cloud_init,
    }
    if "password_hash" in cloud_init:
        account["passwd"] = cloud_init["password_hash"]
    user_data = {"hostname": name, "users": [account], "ssh_pwauth": False}
    for key in ("packages", "runcmd"):
        if cloud_init.get(key):
            user_data[key] = cloud_init[key]
    return user_data


def _guest(entry, ctx):
    settings = ctx.settings
    name = entry.get("name")
    current = ctx.domains.get(name)
    machine = _or(entry.get("machine"), settings["default_machine"])
    microvm = machine == "microvm"
    state = _or(entry.get("state"), "running")
    current_xml = (current.get("xml") or "") if current else ""
    was_running = bool(current) and current.get("state") == "running"
    cloud_init = _mapping(_or(entry.get("cloud_init"), {}))
    user = _or(cloud_init.get("user"), settings["default_user"])
    image = entry.get("image")
    nics, forwards, slirp = _interfaces(name, entry, ctx, current_xml)
    ssh_forward = [f for f in forwards if _mapping(f).get("guest") == 22]
    wait = _or(entry.get("wait_for"), "ssh" if nics else "none")
    cpu = _mapping(_or(entry.get("cpu"), {}))
    maxphysaddr = _mapping(cpu.get("maxphysaddr"))
    hugepages = entry.get("hugepages")
    hp_size = (_mapping(hugepages).get("size") or "2M") if hugepages is not None else None
    hp_kib = HUGEPAGE_KIB.get(hp_size) if hugepages is not None else None
    memory = _int(_or(entry.get("memory_mib"), settings["default_memory_mib"]))
    return {
        "name": name,
        "state": state,
        "present": state != "absent",
        "running": state == "running",
        "exists": current is not None,
        "was_running": was_running,
        # running once the role is done and reachable then; check mode starts nothing, so only a guest running already
        "reachable": state == "running" and (not ctx.check_mode or was_running),
        "autostart": entry.get("autostart"),
        "apply": _or(entry.get("apply"), settings["apply"]),
        "memory_mib": memory,
        "vcpus": _int(_or(entry.get("vcpus"), settings["default_vcpus"])),
        "machine": machine,
        "firmware": _or(entry.get("firmware"), "bios"),
        "cpu": {
            "mode": cpu.get("mode"),
            "model": cpu.get("model"),
            "topology": cpu.get("topology"),
            "maxphysaddr": (
                {"mode": maxphysaddr.get("mode", "passthrough"), "bits": maxphysaddr.get("bits"), "limit": maxphysaddr.get("limit")} if maxphysaddr else None
            ),
        },
        "image": _base_image(_mapping(image)) if image else None,
        "root_volume": "%s.qcow2" % name if (image or entry.get("disk_gib")) else None,
        "disk_gib": entry.get("disk_gib"),
        "disks": _disks(name, entry, settings["pool"], current_xml),
        "remove_disks": entry.get("remove_disks", False),
        "seed_volume": "%s-seed.iso" % name if (image or "cloud_init" in entry) else None,
        "user": user,
        "user_data": _user_data(name, user, cloud_init),
        "meta_data": cloud_init.get("meta_data"),
        "network_config": cloud_init.get("network_config"),
        "secret_seed": "password_hash" in cloud_init,
        "interfaces": nics,
        "forwards": forwards,
        "slirp_forwards": slirp,
        "ssh_port": ssh_forward[0].get("host") if ssh_forward else 22,
        "ssh_forwarded": bool(ssh_forward),
        "hugepages": hugepages is not None,
        "hugepages_size": hp_size,
        "hugepages_kib": hp_kib,
        "hugepages_pages": (memory * 1024 + hp_kib - 1) // hp_kib if hp_kib else 0,
        "filesystems": entry.get("filesystems") or [],
        "hostdevs": entry.get("hostdevs") or [],
        "wait_for": "console" if isinstance(wait, dict) else wait,
        "wait_regex": wait.get("console", "") if isinstance(wait, dict) else "",
        "groups": [settings["inventory_group"], *(entry.get("inventory_groups") or [])],
        "vars": {"ansible_user": user, **_mapping(entry.get("inventory_vars"))},
        "console_log": ("%s/%s/console.log" % (MICROVM_STATE_DIR, name)) if microvm else ("/var/log/libvirt/qemu/%s.console.log" % name),
        "microvm": microvm,
        "kernel": entry.get("kernel"),
        "initrd": entry.get("initrd"),
        "cmdline": entry.get("cmdline"),
    }


# ---------------------------------------------------------------------------- the whole list


def _stat_of(stats, path):
    found = next((s for s in stats if s.get("item") == path), {})
    return _mapping(found.get("stat"))


def _regular_file(stats, path):
    stat = _stat_of(stats, path)
    return bool(stat.get("exists")) and bool(stat.get("isreg"))


def _repeated(values):
    """The values that occur more than once, in the order of their first occurrence."""
    values = list(values)
    return [value for value in dict.fromkeys(values) if values.count(value) > 1]


def _microvm_errors(g, stats):
    """What virtops.kvm.microvm can run: direct kernel boot through qboot, virtio-mmio disks, user networking or a tap on a bridge."""
    errors, cannot = [], []
    if not g["kernel"]:
        errors.append("machine microvm boots a kernel directly (no firmware boots the disk): give kernel (and initrd, cmdline)")
    for what in ("kernel", "initrd"):
        path = g[what]
        if path and (not str(path).startswith("/") or not _regular_file(stats, path)):
            errors.append("%s %s does not exist on the hypervisor (give the absolute path of a file)" % (what, path))
    if not _stat_of(stats, SYSTEMD_MARKER).get("isdir"):
        errors.append("machine microvm guests run as systemd units and this host's PID 1 is not systemd (/run/systemd/system is missing)")
    if g["state"] in ("paused", "present"):
        errors.append("state %s is not possible for a microvm guest (a systemd unit runs or does not): use running, shutdown, destroyed or absent" % g["state"])
    if g["exists"]:
        errors.append("libvirt has a guest of this name: remove it (state: absent, without machine: microvm) before running it as a microvm")
    if g["firmware"] != "bios":
        cannot.append("firmware %s (microvm boots through qboot, there is no UEFI)" % g["firmware"])
    if g["hostdevs"]:
        cannot.append("hostdevs (microvm has no PCI bus)")
    if g["hugepages"]:
        cannot.append("hugepages")
    if g["filesystems"]:
        cannot.append("filesystems")
    if any(g["cpu"].values()):
        cannot.append("cpu (QEMU picks the CPU model)")
    for nic in g["interfaces"]:
        if nic["kind"] in ("network", "sriov"):
            cannot.append(
                "%s interfaces (a microvm NIC is user networking or a tap on a bridge)" % {"network": "libvirt network", "sriov": "sriov_pf"}[nic["kind"]]
            )
    if cannot:
        errors.append("machine microvm cannot have %s" % ", ".join(dict.fromkeys(cannot)))
    if g["wait_for"] in ("ssh", "ip") and not g["ssh_forwarded"]:
        errors.append(
            "a microvm guest is not on a libvirt network, so its address is not known: wait_for %s needs a user interface forwarding a host port "
            "to guest port 22 (or wait_for: none, or {console: REGEX})" % g["wait_for"]
        )
    return errors


def _interface_errors(g, networks):
    errors = []
    for nic in g["interfaces"]:
        kind = nic["kind"]
        if kind == "unknown":
            errors.append("interface %s names none of network, bridge, sriov_pf, user" % nic["source"])
        elif kind == "network" and not g["microvm"]:
            net = next((n for n in networks if n.get("name") == nic["source"]), None)
            if net is None:
                errors.append("libvirt has no network '%s' (networks: %s)" % (nic["source"], ", ".join(n.get("name", "") for n in networks) or "none"))
            elif g["running"] and not net.get("active"):
                errors.append("network '%s' is not active; start it (virtops.kvm.network state=active) first" % nic["source"])
        elif kind == "sriov":
            if not nic["pf_found"]:
                errors.append("sriov_pf '%s' is not an SR-IOV capable device of this host (by PCI address or interface name)" % nic["source"])
            elif nic["vf"] is None:
                errors.append("sriov_pf '%s' has no free VF (create more with virtops.kvm.sriov)" % nic["source"])
            elif g["running"] and nic["pf_up"] is False:
                errors.append(
                    "sriov_pf '%s' is down: libvirt gives a VF to a guest as an interface only when its PF is up "
                    "(virtops.kvm.sriov pf_up: true)" % nic["source"]
                )
        if nic["mac"] and not MAC.match(str(nic["mac"])):
            errors.append("mac '%s' is not a MAC address" % nic["mac"])
    return errors


def _guest_errors(g, machines, networks, stats):
    errors = []
    if not NAME.match(str(g["name"])):
        errors.append('the name may hold only letters, digits, ".", "_" and "-"')
    if g["microvm"]:
        errors += _microvm_errors(g, stats)
    elif g["kernel"] or g["initrd"] or g["cmdline"]:
        errors.append(
            "kernel, initrd and cmdline are for machine: microvm guests (run by virtops.kvm.microvm); a libvirt guest of kvm_guest_list boots from "
            "its image (direct kernel boot for libvirt: the single-guest kvm_guest_kernel)"
        )
    if g["machine"] not in machines and not g["microvm"]:
        errors.append("machine type '%s' is not offered by this host's QEMU (x86_64); it offers: %s" % (g["machine"], ", ".join(machines)))
    if g["memory_mib"] < 16 or g["vcpus"] < 1:
        errors.append("memory_mib must be at least 16 and vcpus at least 1")
    if g["cpu"]["mode"] == "custom" and not g["cpu"]["model"]:
        errors.append("cpu mode custom needs cpu.model")
    if g["hugepages"] and g["hugepages_kib"] is None:
        errors.append("hugepages size must be 2M or 1G, got %s" % g["hugepages_size"])
    if len(g["disks"]) > len(DISK_TARGETS):
        errors.append("at most %d disks (vdb to vdz), got %d" % (len(DISK_TARGETS), len(g["disks"])))
    image = g["image"]
    if image:
        if not image["src"]:
            errors.append("image needs src (a path on the hypervisor or an http(s) URL)")
        elif not URL.match(str(image["src"])) and not _regular_file(stats, image["src"]):
            errors.append("image %s does not exist on the hypervisor (or is not a regular file)" % image["src"])
        if image["checksum"] and not CHECKSUM.match(str(image["checksum"])):
            errors.append("image checksum must look like sha256:<hex digest>, got '%s'" % image["checksum"])
    errors += _interface_errors(g, networks)
    for given in g["hostdevs"]:
        dev = _mapping(given)
        if not (PCI.match(str(dev.get("pci", ""))) or USB.match(str(dev.get("usb", "")))):
            errors.append("hostdev %s needs pci: DDDD:BB:SS.F or usb: VENDOR:PRODUCT" % json.dumps(dev))
    return ["guest %s: %s" % (g["name"], error) for error in errors]


def _hugepage_errors(guests, host):
    errors = []
    pools = _mapping(_mapping(host.get("hugepages")).get("pools"))
    for kib in sorted(HUGEPAGE_KIB.values()):
        wanting = [g for g in guests if g["present"] and g["running"] and not g["was_running"] and g["hugepages_kib"] == kib]
        if not wanting:
            continue
        names = ", ".join(g["name"] for g in wanting)
        pool = pools.get("%dkB" % kib)
        needed = sum(g["hugepages_pages"] for g in wanting)
        if pool is None:
            errors.append("guests %s want hugepages of %d kB, a size this host has no pool of (sizes: %s)" % (names, kib, ", ".join(pools) or "none"))
        elif pool.get("free", 0) < needed:
            errors.append(
                "guests %s need %d free hugepages of %d kB to start, the host has %d free (of %d); allocate more with virtops.kvm.hugepages or lower memory_mib"
                % (names, needed, kib, pool.get("free", 0), pool.get("total", 0))
            )
    return errors


def fleet_errors(guests, settings, host, image_stats):
    """Everything wrong with the request, found before anything changes: a list of messages."""
    errors = []
    libvirt = _mapping(host.get("libvirt"))
    arch = _mapping(_mapping(libvirt.get("guests")).get("x86_64"))
    domain_types = list(arch.get("domain_types") or [])
    machines = sorted(set(arch.get("machines") or []) | set(_mapping(arch.get("machine_aliases"))))
    networks = list(libvirt.get("networks") or [])
    pools = list(libvirt.get("pools") or [])
    wait_timeout = _int(settings["wait_timeout"])
    if not 1 <= wait_timeout <= 3600:
        errors.append("kvm_guest_wait_timeout must be 1..3600 seconds, got %s" % settings["wait_timeout"])
    if settings["domain_type"] not in domain_types:
        errors.append(
            "domain type '%s' is not offered by this host's QEMU for x86_64 (it offers: %s); use kvm_guest_domain_type: qemu for software emulation"
            % (settings["domain_type"], ", ".join(domain_types))
        )
    present = [g for g in guests if g["present"]]
    # guests without volumes (no image, no disks, no cloud-init seed: network or firmware boot) need no pool
    if any(g["root_volume"] or g["seed_volume"] or g["disks"] for g in present):
        pool = next((p for p in pools if p.get("name") == settings["pool"]), None)
        if pool is None or not pool.get("active"):
            active = ", ".join(p.get("name", "") for p in pools if p.get("active")) or "none"
            errors.append("kvm_guest_pool '%s' is not an active storage pool of this host (active pools: %s)" % (settings["pool"], active))
    for name in _repeated(g["name"] for g in guests):
        errors.append("guest %s is listed more than once in kvm_guest_list" % name)
    for port in _repeated(_mapping(f).get("host") for g in present for f in g["forwards"]):
        errors.append("host port %s is forwarded by more than one guest interface" % port)
    stats = [_mapping(s) for s in image_stats or []]
    for g in present:
        errors += _guest_errors(g, machines, networks, stats)
    return errors + _hugepage_errors(guests, host)


def plan_fleet(entries, settings=None, host=None, image_stats=None, check_mode=False):
    """``{"guests": [...], "errors": [...]}`` for ``kvm_guest_list`` ``entries`` on the host ``host_info`` described."""
    settings = dict(SETTINGS, **{k: v for k, v in (settings or {}).items() if v is not None})
    host = _mapping(host)
    domains = [_mapping(d) for d in host.get("domains") or []]
    ctx = _Context(
        settings=settings,
        host=host,
        domains={d.get("name"): d for d in reversed(domains)},  # the first of a name, as libvirt cannot have two
        all_xml="\n".join(d.get("xml") or "" for d in domains),
        user_kind=user_backend(settings, host),
        check_mode=check_mode,
        taken=set(),  # the VFs given to guests earlier in the list
    )
    guests = [_guest(_mapping(entry), ctx) for entry in entries or []]
    return {"guests": guests, "errors": fleet_errors(guests, settings, host, image_stats)}
