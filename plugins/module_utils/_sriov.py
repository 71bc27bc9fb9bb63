# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""sriov: the VF count of an SR-IOV physical function, per-VF settings, the VF driver and a boot-time udev rule.

:func:`ensure_sriov` validates the whole request (PF, count, every VF setting, MACs) and plans
before anything is written; check mode returns that plan. Per-VF settings are read and set over
the run's netlink, which is ``None`` under a fake ``root``: then they are refused, never read from
the real host.
"""

from __future__ import annotations

import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import apply_files, locked_files
from ansible_collections.virtops.kvm.plugins.module_utils._pci import (
    MANAGED,
    PCI_DEVICES,
    VFIO,
    PciHost,
    bind_vfio,
    file_plan,
    guest_users,
    host_users,
    looks_like_address,
    normalize_address,
    pci_netdevs,
    unbind_vfio,
    vf_addresses,
)

IFF_UP = 0x1  # in /sys/class/net/<name>/flags
# After 80-net-setup-link.rules: there $name is the interface's final name. A rule before it sees the kernel's
# name (eth0) when the PF's driver loads in the real root, and its "ip link set dev eth0 vf ..." runs after the
# rename and fails: the VF count came back at boot, the VF settings did not.
UDEV_RULE = "/etc/udev/rules.d/81-virtops-sriov-%s.rules"
# where releases before that wrote the rule; removed when the rule is written or removed
OLD_UDEV_RULE = "/etc/udev/rules.d/70-virtops-sriov-%s.rules"
VF_FIELDS = ("mac", "vlan", "qos", "spoofchk", "trust", "link_state", "max_tx_rate")
LINK_STATES = ("auto", "enable", "disable")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
MAX_VLAN = 4095
MAX_QOS = 7
KERNEL_DEFAULT = "(kernel default)"


# -- input ---------------------------------------------------------------------------------------
def validate_mac(value, what):
    """``value`` lower-cased if it is a unicast MAC address (six colon-separated hex octets), else ValidationError."""
    text = str(value).strip().lower() if value is not None else ""
    if not _MAC_RE.match(text) or text != str(value).lower():
        raise ValidationError("%s %r is not a MAC address: write six hex octets separated by colons, such as 02:00:00:00:01:00" % (what, value))
    if int(text[:2], 16) & 1:
        raise ValidationError("%s %s is a multicast address (lowest bit of the first octet set): a VF needs a unicast MAC" % (what, text))
    if text == "00:00:00:00:00:00":
        raise ValidationError("%s is all zeros: give a unicast MAC (locally administered ones start with 02)" % what)
    return text


def _int_in(value, what, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError("%s must be an integer from %d to %d, got %r" % (what, low, high, value))
    return value


def wanted_vf(spec):
    """The settings of one ``vfs[]`` entry, validated: ``{field: value}`` for the fields given."""
    index = spec["index"]
    where = "vfs[%d]" % index
    wanted = {key: spec[key] for key in VF_FIELDS if spec.get(key) is not None}
    if "mac" in wanted:
        wanted["mac"] = validate_mac(wanted["mac"], where + ".mac")
    if "vlan" in wanted:
        _int_in(wanted["vlan"], where + ".vlan", 0, MAX_VLAN)
    if "qos" in wanted:
        if "vlan" not in wanted:
            raise ValidationError("%s: qos needs vlan" % where)
        _int_in(wanted["qos"], where + ".qos", 0, MAX_QOS)
    if "max_tx_rate" in wanted:
        _int_in(wanted["max_tx_rate"], where + ".max_tx_rate", 0, 2**32 - 1)
    if "link_state" in wanted and wanted["link_state"] not in LINK_STATES:
        raise ValidationError("%s.link_state must be one of %s, got %r" % (where, ", ".join(LINK_STATES), wanted["link_state"]))
    for key in ("spoofchk", "trust"):
        if key in wanted and not isinstance(wanted[key], bool):
            raise ValidationError("%s.%s must be true or false, got %r" % (where, key, wanted[key]))
    return wanted


def resolve_pf(host, device):
    """PCI address of ``device`` (an address or a netdev name); ValidationError when unknown."""
    if looks_like_address(device):
        address = normalize_address(device)
        if not host.exists(address):
            raise ValidationError("no PCI device %s on this host (see lspci -D)" % address)
        return address
    for address in host.fs.listdir(PCI_DEVICES):
        if device in pci_netdevs(host.fs, address):
            return address
    raise ValidationError("no PCI device or network interface named %r on this host" % device)


def predicted_vf_address(fs, pf, index):
    """The address VF ``index`` gets (PF routing ID + First VF Offset + index * VF Stride), or None."""
    base = "%s/%s" % (PCI_DEVICES, pf)
    offset, stride = fs.read_int(base + "/sriov_offset"), fs.read_int(base + "/sriov_stride")
    if offset is None or stride is None:
        return None
    domain, bus, rest = pf.split(":")
    slot, function = rest.split(".")
    rid = (int(bus, 16) << 8) + (int(slot, 16) << 3) + int(function) + offset + index * stride
    return "%s:%02x:%02x.%d" % (domain, rid >> 8, (rid >> 3) & 0x1F, rid & 7)


def _vf_ready(fs, pf, count):
    addresses = vf_addresses(fs, pf)
    if len(addresses) != count:
        return False
    if fs.read("%s/%s/sriov_drivers_autoprobe" % (PCI_DEVICES, pf)) == "0":
        return True
    for address in addresses:
        driver = fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, address))
        if driver is None or (driver != VFIO and not fs.listdir("%s/%s/net" % (PCI_DEVICES, address))):
            return False
    return True


def udev_rule(pf, num_vfs, wanted_vfs, vf_driver, fs, *, pf_up=False):
    """The boot-time rule: PF link up, VF count, per-VF ``ip link`` settings (validated values only), vfio-pci binding."""
    lines = [MANAGED % "sriov"]
    prefix = 'ACTION=="add", SUBSYSTEM=="net", KERNELS=="%s"' % pf
    if pf_up:
        lines.append('%s, RUN+="/usr/sbin/ip link set dev $name up"\n' % prefix)
    if vf_driver == VFIO:
        lines.append('%s, ATTR{device/sriov_drivers_autoprobe}="0"\n' % prefix)
    lines.append('%s, ATTR{device/sriov_numvfs}="%d"\n' % (prefix, num_vfs))
    for index, wanted in sorted(wanted_vfs.items()):
        args = []
        for key in VF_FIELDS:
            if key in wanted:
                value = wanted[key]
                if isinstance(value, bool):
                    value = "on" if value else "off"
                args += [key, str(value)]
        if args:
            lines.append('%s, RUN+="/usr/sbin/ip link set dev $name vf %d %s"\n' % (prefix, index, " ".join(args)))
    if vf_driver == VFIO:
        for index in range(num_vfs):
            vf = predicted_vf_address(fs, pf, index)
            if vf:
                lines.append(
                    'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="%s", ATTR{driver_override}="vfio-pci", RUN+="/usr/sbin/modprobe vfio-pci", '
                    "RUN+=\"/bin/sh -c 'echo $kernel > /sys/bus/pci/drivers_probe'\"\n" % vf
                )
    return "".join(lines)


# -- plan ----------------------------------------------------------------------------------------
def _plan_pf(host, params, pf):
    fs = host.fs
    base = "%s/%s" % (PCI_DEVICES, pf)
    pf_dev = host.device(pf)
    total = fs.read_int(base + "/sriov_totalvfs")
    if total is None:
        raise ValidationError(
            "%s (%s, driver %s) is not SR-IOV capable: it has no sriov_totalvfs (is the PF driver loaded?)" % (pf, pf_dev["ids"], pf_dev["driver"] or "none")
        )
    current = fs.read_int(base + "/sriov_numvfs", 0)
    num_vfs = params.get("num_vfs")
    wanted_count = current if num_vfs is None else num_vfs
    if wanted_count < 0 or wanted_count > total:
        raise ValidationError("num_vfs=%d is outside what %s supports (0 to sriov_totalvfs=%d)" % (wanted_count, pf, total))
    wanted_vfs = {}
    for spec in params.get("vfs") or ():
        if spec["index"] < 0 or spec["index"] >= wanted_count:
            raise ValidationError("vfs has index %d but %s will have %d VFs (indexes 0-%d)" % (spec["index"], pf, wanted_count, wanted_count - 1))
        if spec["index"] in wanted_vfs:
            raise ValidationError("vfs lists index %d twice" % spec["index"])
        wanted_vfs[spec["index"]] = wanted_vf(spec)
    pf_netdev = (pf_dev["netdevs"] or [None])[0]
    up_now = None
    if pf_netdev is not None:
        flags = fs.read("/sys/class/net/%s/flags" % pf_netdev)
        up_now = bool(int(flags, 16) & IFF_UP) if flags else None
    up_change = bool(params.get("pf_up")) and not up_now
    if params.get("pf_up") and pf_netdev is None:
        raise ValidationError("pf_up brings the PF's network interface up, but %s has none (driver %s)" % (pf, pf_dev["driver"]))
    if up_change and host.confined:
        raise ValidationError(
            "pf_up sets the link over netlink, which with root=%s would be this machine's, not that tree's: "
            "run with root=/ on the host that has the PF, or leave pf_up out" % host.fs.root
        )
    if any(wanted_vfs.values()):
        if pf_netdev is None:
            raise ValidationError("per-VF settings are applied through the PF's network interface, but %s has none (driver %s)" % (pf, pf_dev["driver"]))
        if host.confined:
            raise ValidationError(
                "per-VF settings (vfs) are read and set over netlink, which with root=%s would be this machine's, not that tree's: "
                "run with root=/ on the host that has the PF, or leave vfs out" % host.fs.root
            )
    return {
        "pf": pf,
        "base": base,
        "pf_dev": pf_dev,
        "pf_netdev": pf_netdev,
        "total": total,
        "current": current,
        "wanted_count": wanted_count,
        "wanted_vfs": wanted_vfs,
        "count_change": wanted_count != current,
        "up_now": up_now,
        "up_change": up_change,
        "before_vfs": vf_addresses(fs, pf),
    }


def _refuse_in_use(host, plan):
    """Changing a non-zero count destroys the VFs: refuse while a guest or the host holds one (unless force)."""
    fs, before_vfs = host.fs, plan["before_vfs"]
    netdevs = [(nd, a) for a in before_vfs for nd in pci_netdevs(fs, a)]
    users = guest_users(host, before_vfs, netdevs)
    reasons = ["VF %s is attached to running guest %s" % (a, ", ".join(names)) for a, names in sorted(users.items())]
    routes = host.net.default_route_ifnames() if host.net and netdevs else set()
    for address in before_vfs:
        reasons += ["VF %s: %s" % (address, r) for r in host_users(host, address, routes)]
    if reasons:
        raise ValidationError(
            "changing %s from %d to %d VFs goes through 0 and destroys the existing VFs, but %s. "
            "Detach them first or set force=true" % (plan["pf"], plan["current"], plan["wanted_count"], "; ".join(reasons)),
            in_use=reasons,
        )


def _vf_setting_changes(wanted_vfs, kernel):
    """``(changes {index: settings to set}, before, after)`` for the per-VF settings."""
    changes, before, after = {}, {}, {}
    for index, wanted in sorted(wanted_vfs.items()):
        have = kernel.get(index, {})
        diff = {key: value for key, value in wanted.items() if have.get(key) != value}
        if "qos" in diff or "vlan" in diff:
            diff.setdefault("vlan", wanted.get("vlan", have.get("vlan")))
            diff.setdefault("qos", wanted.get("qos", 0))
        before[index] = {key: have.get(key) for key in wanted}
        after[index] = dict(wanted)
        if diff:
            changes[index] = diff
    return changes, before, after


def _kernel_vfs(host, plan, exists_now):
    if plan["pf_netdev"] and host.net and exists_now and (plan["wanted_vfs"] or plan["wanted_count"]):
        return host.net.vfs(plan["pf_netdev"])
    return {}


def _driver_changes(host, vf_list, vf_driver, exists_now):
    """VF addresses whose driver must change for ``vf_driver`` (``None`` = leave drivers alone)."""
    if vf_driver is None:
        return []
    changes = []
    for address in vf_list:
        driver = host.fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, address)) if address and exists_now else None
        if not exists_now and vf_driver != VFIO:
            continue
        if (vf_driver == VFIO) != (driver == VFIO) or not exists_now:
            changes.append(address)
    return changes


# -- apply ---------------------------------------------------------------------------------------
def _set_count(host, plan, timeout):
    fs, base, pf, wanted = host.fs, plan["base"], plan["pf"], plan["wanted_count"]
    if plan["current"] > 0:
        fs.write(base + "/sriov_numvfs", 0)
    if wanted == 0:
        return
    fs.write(base + "/sriov_numvfs", wanted)
    if not host.wait_for(lambda: _vf_ready(fs, pf, wanted), timeout):
        raise HostError("wrote %d to %s/sriov_numvfs but after %ss the VFs are not all there with a driver: %s" % (wanted, pf, timeout, vf_addresses(fs, pf)))
    if not host.confined and host.runner and host.runner.which("udevadm"):  # let udev rename the VFs' interfaces before reporting them
        host.runner.run(["udevadm", "settle", "--timeout=%d" % timeout], check=False)


def _verify_vf_settings(host, plan):
    kernel = host.net.vfs(plan["pf_netdev"])
    for index, wanted in plan["wanted_vfs"].items():
        have = kernel.get(index, {})
        wrong = {key: have.get(key) for key, value in wanted.items() if have.get(key) != value}
        if wrong:
            raise HostError("VF %d of %s: the driver accepted %s but reports %s" % (index, plan["pf_netdev"], {k: wanted[k] for k in wrong}, wrong))


def _vf_report(host, index, address, kernel):
    dev = host.device(address) if address else {}
    info = kernel.get(index, {})
    report = {"index": index, "address": address, "netdev": (dev.get("netdevs") or [None])[0], "driver": dev.get("driver")}
    report.update({key: info.get(key) for key in VF_FIELDS})
    return report


def ensure_sriov(backends, params, check_mode, *, sleep=time.sleep):
    """The module's entry point: converge the PF's VFs, their settings, their driver and the boot-time rule."""
    host = PciHost.from_backends(backends, check_mode, with_guests=not backends.confined, sleep=sleep)
    timeout = params.get("timeout") or 60
    vf_driver = params.get("vf_driver")
    fs = host.fs
    pf = resolve_pf(host, params["device"])
    rule_path = UDEV_RULE % pf
    old_rule_path = OLD_UDEV_RULE % pf
    with locked_files(fs, [rule_path, old_rule_path]):
        plan = _plan_pf(host, params, pf)
        if plan["count_change"] and plan["current"] > 0 and not params.get("force"):
            _refuse_in_use(host, plan)
        rule = udev_rule(pf, plan["wanted_count"], plan["wanted_vfs"], vf_driver, fs, pf_up=params.get("pf_up")) if params.get("persistent") else None
        rule_changes, rule_before, rule_after = file_plan(fs, {rule_path: rule, old_rule_path: None})
        changes = ["pf_up"] if plan["up_change"] else []
        if plan["up_change"] and not check_mode:
            host.net.set_up(plan["pf_netdev"])
        changes += ["num_vfs"] if plan["count_change"] else []
        if plan["count_change"] and not check_mode:
            _set_count(host, plan, timeout)
        exists_now = not (check_mode and plan["count_change"])
        kernel = _kernel_vfs(host, plan, exists_now)
        setting_changes, before_settings, after_settings = _vf_setting_changes(plan["wanted_vfs"], kernel)
        changes += ["vfs[%d]" % index for index in sorted(setting_changes)]
        if setting_changes and not check_mode:
            for index, diff in sorted(setting_changes.items()):
                host.net.set_vf(plan["pf_netdev"], index, diff)
            _verify_vf_settings(host, plan)
        vf_list = vf_addresses(fs, pf) if exists_now else [predicted_vf_address(fs, pf, i) for i in range(plan["wanted_count"])]
        drivers_before = {a: fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, a)) for a in plan["before_vfs"]}
        driver_changes = _driver_changes(host, vf_list, vf_driver, exists_now)
        changes += ["vf_driver %s" % address for address in driver_changes]
        if not check_mode:
            for address in driver_changes:
                if vf_driver == VFIO:
                    bind_vfio(host, address)
                else:
                    unbind_vfio(host, address)
            apply_files(fs, {path: rule if path == rule_path else None for path in rule_changes})
        changes += rule_changes
    final = vf_addresses(fs, pf) if exists_now else vf_list
    if host.net and plan["pf_netdev"] and exists_now and final and not check_mode:
        kernel = host.net.vfs(plan["pf_netdev"])
    after_drivers = {a: (vf_driver if vf_driver == VFIO else KERNEL_DEFAULT) if vf_driver else drivers_before.get(a) for a in final if a}
    return {
        "changed": bool(changes),
        "changes": changes,
        "pf": {
            "address": pf,
            "netdev": plan["pf_netdev"],
            "driver": plan["pf_dev"]["driver"],
            "totalvfs": plan["total"],
            "up": True if plan["up_change"] else plan["up_now"],
            "numvfs": fs.read_int(plan["base"] + "/sriov_numvfs", 0) if not check_mode else plan["wanted_count"],
        },
        "vfs": [_vf_report(host, i, a, kernel) for i, a in enumerate(final)],
        "rule": rule_path if params.get("persistent") else None,
        "warnings": list(host.warnings),
        "diff": {
            # a rule of an earlier release (OLD_UDEV_RULE) shows as the rule before
            "before": {
                "num_vfs": plan["current"],
                "pf_up": plan["up_now"],
                "vfs": before_settings,
                "vf_drivers": drivers_before,
                "rule": rule_before[rule_path] if rule_before[rule_path] is not None else rule_before[old_rule_path],
            },
            "after": {
                "num_vfs": plan["wanted_count"],
                "pf_up": True if plan["up_change"] else plan["up_now"],
                "vfs": after_settings,
                "vf_drivers": after_drivers,
                "rule": rule_after[rule_path],
            },
        },
    }
