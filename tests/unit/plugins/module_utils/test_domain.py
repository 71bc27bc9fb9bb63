# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain logic against libvirt's test:///default driver."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain import (
    Lifecycle,
    domain_equivalence,
    ensure_domain,
    live_equivalence,
    machine_aliases,
    pending_restart,
    referenced_storage,
)
from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import gather_domains
from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import SchemaCheck, find_domain_schema
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    VIR_DOMAIN_XML_INACTIVE,
    VIR_DOMAIN_XML_SECURE,
    LibvirtClient,
)
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends, finish
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml, read_last_applied, to_string

NAME = "virtops-test-domain-unit"
OTHERS = ("virtops-test-domain-unit-b", "virtops-test-domain-unit-c")


def domain_xml(memory="192", unit="MiB", *, disks=("vda",), tmp="/tmp", name=NAME, extra=""):
    disk_xml = "".join("<disk type='file' device='disk'><source file='%s/%s.img'/><target dev='%s'/></disk>" % (tmp, dev, dev) for dev in disks)
    return (
        "<domain type='test'><name>%s</name><memory%s>%s</memory><vcpu>1</vcpu><os><type>hvm</type></os>%s"
        "<devices>%s<interface type='network'><source network='default'/></interface></devices></domain>"
        % (name, " unit='%s'" % unit if unit else "", memory, extra, disk_xml)
    )


@pytest.fixture(autouse=True)
def _clean(test_conn):
    """test:///default is shared by the whole process: remove our guest before and after each test."""

    def remove():
        for name in (NAME, *OTHERS):
            dom = test_conn.lookup_domain(name)
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefineFlags(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

    remove()
    yield
    remove()


def params(**kwargs):
    base = dict(
        name=NAME,
        xml=domain_xml(),
        domains=None,
        state="present",
        autostart=None,
        shutdown_timeout=5,
        force=False,
        apply="next_boot",
        save_path=None,
        restore_from=None,
        remove_storage=False,
        uri="test:///default",
    )
    base.update(kwargs)
    return base


def run_raw(conn, check=False, **kwargs):
    """The entry point's own result (diff always there, warnings as a list)."""
    return ensure_domain(Backends(libvirt=conn), params(**kwargs), check)


def run(conn, check=False, **kwargs):
    """What the module returns in diff mode: run_module's finish() drops the diff when nothing changed."""
    result, warnings = finish(run_raw(conn, check, **kwargs), True)
    result["warnings"] = warnings
    return result


def test_define_then_idempotent(test_conn):
    predicted = run(test_conn, check=True)
    assert predicted["changed"] and predicted["domain"]["uuid"] is None
    assert test_conn.lookup_domain(NAME) is None
    first = run(test_conn)
    assert first["changed"] and first["domain"]["state"] == "shutoff"
    assert read_last_applied(parse_xml(first["xml"])) is not None
    again = run(test_conn)
    assert not again["changed"] and "diff" not in again
    assert run(test_conn, check=True)["changed"] is False


@pytest.mark.parametrize("memory,unit", [("196608", "KiB"), ("196608", None), ("201326592", "b"), ("192", "M")])
def test_equal_sizes_in_other_units_are_no_change(test_conn, memory, unit):
    run(test_conn)
    result = run(test_conn, xml=domain_xml(memory=memory, unit=unit))
    # the stored intent changes (so the next removal is computed right), the configuration does not
    assert '<memory unit="KiB">196608</memory>' in result["xml"]


def test_memory_change_is_predicted_and_applied(test_conn):
    run(test_conn)
    check = run(test_conn, check=True, xml=domain_xml(memory="256"))
    real = run(test_conn, xml=domain_xml(memory="256"))
    assert check["changed"] is real["changed"] is True
    assert "262144" in real["xml"] and '<currentMemory unit="KiB">262144' in real["xml"]
    assert "262144" in real["diff"][0]["after"] and "196608" in real["diff"][0]["before"]
    assert not run(test_conn, xml=domain_xml(memory="256"))["changed"]


def test_removed_disk_goes_away_and_mac_is_stable(test_conn):
    first = run(test_conn, xml=domain_xml(disks=("vda", "vdb")))
    mac = parse_xml(first["xml"]).find("devices/interface/mac").get("address")
    result = run(test_conn, xml=domain_xml(disks=("vda",)))
    xml = parse_xml(result["xml"])
    assert result["changed"]
    assert [t.get("dev") for t in xml.findall("devices/disk/target")] == ["vda"]
    assert xml.find("devices/interface/mac").get("address") == mac


@pytest.mark.parametrize(
    "xml,match",
    [
        ("<domain><name>x", "not well-formed XML.*line 1, column"),
        ("<network><name>%s</name></network>" % NAME, "must have a <domain> root element, found <network>"),
        (domain_xml(name="virtops-test-other"), "does not match name=%s" % NAME),
        (domain_xml(extra="").replace("<vcpu>", "<uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid><vcpu>"), "already belongs to guest test"),
    ],
)
def test_bad_xml_fails_and_changes_nothing(test_conn, xml, match):
    with pytest.raises(ValidationError, match=match):
        run(test_conn, xml=xml)
    assert test_conn.lookup_domain(NAME) is None


def test_schema_validation_rejects_unknown_elements(test_conn):
    with pytest.raises(LibvirtError):
        run(test_conn, xml=domain_xml(extra="<bogus/>"))
    assert test_conn.lookup_domain(NAME) is None


@pytest.mark.parametrize("extra,ok", [("", True), ("<bogus/>", False)])
def test_check_mode_predicts_schema_errors(test_conn, extra, ok):
    if find_domain_schema() is None:
        pytest.fail("libvirt's domain.rng is not installed: the harness installs libvirt (libvirt-daemon-system)")
    if ok:
        result = run(test_conn, check=True, xml=domain_xml(extra=extra))
        assert result["changed"] and result["warnings"] == []
    else:
        with pytest.raises(ValidationError, match=r"failed to validate against schema .*domain\.rng.*bogus") as err:
            run(test_conn, check=True, xml=domain_xml(extra=extra))
        assert any("bogus" in line for line in err.value.details["schema_errors"])
    assert test_conn.lookup_domain(NAME) is None


def test_check_mode_without_a_schema_predicts_and_warns(test_conn, tmp_path, monkeypatch):
    from ansible_collections.virtops.kvm.plugins.module_utils import _domain_state

    monkeypatch.setattr(_domain_state, "schema_dirs", lambda: [str(tmp_path)])
    result = run(test_conn, check=True, xml=domain_xml(extra="<bogus/>"))
    assert result["changed"] is True
    assert len(result["warnings"]) == 1 and "could not validate" in result["warnings"][0] and str(tmp_path) in result["warnings"][0]
    assert test_conn.lookup_domain(NAME) is None
    # a run that defines nothing has nothing to warn about
    run(test_conn)
    assert run(test_conn, check=True)["warnings"] == []


def test_schema_check_is_skipped_for_a_remote_libvirt():
    check = SchemaCheck("qemu+ssh://hv1/system")
    assert check.path is None and "not on this machine" in check.warning
    assert check.validate(parse_xml("<domain><bogus/></domain>"), "x") is False


def test_schema_check_finds_the_schema_virt_xml_validate_names(tmp_path, monkeypatch):
    from ansible_collections.virtops.kvm.plugins.module_utils import _domain_state

    schemas = tmp_path / "share" / "schemas"
    schemas.mkdir(parents=True)
    (schemas / "domain.rng").write_text(
        "<grammar xmlns='http://relaxng.org/ns/structure/1.0'><start><element name='domain'><empty/></element></start></grammar>"
    )
    tool = tmp_path / "virt-xml-validate"
    tool.write_text('#!/bin/sh\nSCHEMA="%s/${TYPE}.rng"\n' % schemas)
    monkeypatch.setattr(_domain_state.shutil, "which", lambda name: str(tool))
    assert _domain_state.schema_dirs()[0] == str(schemas)
    check = SchemaCheck("qemu:///system")
    assert check.path == str(schemas / "domain.rng")
    assert check.validate(parse_xml("<domain/>"), "x") is True
    with pytest.raises(ValidationError, match="failed to validate"):
        check.validate(parse_xml("<domain><x/></domain>"), "x")


@pytest.mark.parametrize("name", ["a/b", "bad\nname", "", " padded"])
def test_names_libvirt_refuses_are_refused_early(test_conn, name):
    for check in (True, False):
        with pytest.raises(ValidationError, match="name"):
            run(test_conn, check=check, name=name, xml=domain_xml(name=name) if name.strip() else domain_xml())
    assert test_conn.lookup_domain(NAME) is None


def test_slash_in_name_message(test_conn):
    with pytest.raises(ValidationError, match=r"contains '/', which libvirt refuses"):
        run(test_conn, check=True, name="virtops/x", xml=None)


def test_missing_guest_without_xml_fails(test_conn):
    with pytest.raises(ValidationError, match="does not exist; give its xml"):
        run(test_conn, xml=None, state="running")


@pytest.mark.parametrize(
    "sequence",
    [
        [("running", "running", ["start"]), ("paused", "paused", ["pause"]), ("running", "running", ["resume"])],
        [("running", "running", ["start"]), ("paused", "paused", ["pause"]), ("destroyed", "shutoff", ["destroy"])],
        [("running", "running", ["start"]), ("saved", "shutoff", ["save (managed)"]), ("running", "running", ["start"])],
        [("running", "running", ["start"]), ("shutdown", "shutoff", ["shutdown"])],
    ],
)
def test_power_states_are_predicted_and_idempotent(test_conn, sequence):
    run(test_conn)
    for state, expect_state, expect_actions in sequence:
        check = run(test_conn, check=True, xml=None, state=state)
        real = run(test_conn, xml=None, state=state)
        assert check["actions"] == real["actions"] == expect_actions
        assert check["domain"]["state"] == real["domain"]["state"] == expect_state
        again = run(test_conn, xml=None, state=state)
        assert not again["changed"] and again["actions"] == []


def test_restarted_always_changes(test_conn):
    run(test_conn, state="running")
    assert run(test_conn, state="restarted")["actions"] == ["reboot"]
    assert run(test_conn, state="restarted")["changed"]


def test_autostart(test_conn):
    run(test_conn)
    assert run(test_conn, check=True, autostart=True)["changed"]
    assert run(test_conn, autostart=True)["domain"]["autostart"] is True
    assert not run(test_conn, autostart=True)["changed"]


def test_pending_restart_and_apply_restart(test_conn):
    run(test_conn, state="running")
    pending = run(test_conn, state="running", xml=domain_xml(memory="256"))
    assert pending["domain"]["pending_restart"] is True
    assert run(test_conn, state="running", xml=domain_xml(memory="256"))["domain"]["pending_restart"] is True
    applied = run(test_conn, state="running", xml=domain_xml(memory="256"), apply="restart")
    assert applied["changed"] and applied["actions"] == ["shutdown", "start"]
    assert applied["domain"]["pending_restart"] is False


def test_save_path_and_restore_from(test_conn, tmp_path):
    path = str(tmp_path / "state")
    run(test_conn, state="running")
    saved = run(test_conn, xml=None, state="saved", save_path=path)
    assert saved["changed"] and saved["domain"]["state"] == "shutoff"
    assert not run(test_conn, xml=None, state="saved", save_path=path)["changed"]
    restored = run(test_conn, xml=None, state="running", restore_from=path)
    assert restored["actions"] == ["restore from %s" % path] and restored["domain"]["state"] == "running"


def test_restore_from_missing_file_fails(test_conn, tmp_path):
    run(test_conn)
    with pytest.raises(ValidationError, match=r"restore_from: .* does not exist"):
        run(test_conn, xml=None, state="running", restore_from=str(tmp_path / "nope"))
    assert test_conn.lookup_domain(NAME).isActive() == 0


def test_absent_with_remove_storage_removes_only_own_files(test_conn, tmp_path):
    for dev in ("vda", "vdb", "other"):
        (tmp_path / ("%s.img" % dev)).write_text("x")
    run(test_conn, state="running", xml=domain_xml(disks=("vda", "vdb"), tmp=str(tmp_path)))
    check = run(test_conn, check=True, state="absent", remove_storage=True)
    assert check["changed"] and sorted(check["removed_storage"]) == [str(tmp_path / "vda.img"), str(tmp_path / "vdb.img")]
    assert (tmp_path / "vda.img").exists()
    result = run(test_conn, state="absent", remove_storage=True)
    assert sorted(result["removed_storage"]) == sorted(check["removed_storage"])
    assert not (tmp_path / "vda.img").exists() and (tmp_path / "other.img").exists()
    assert test_conn.lookup_domain(NAME) is None
    assert not run(test_conn, state="absent")["changed"]


def test_absent_keeps_storage_by_default(test_conn, tmp_path):
    (tmp_path / "vda.img").write_text("x")
    run(test_conn, xml=domain_xml(tmp=str(tmp_path)))
    assert run(test_conn, state="absent")["removed_storage"] == []
    assert (tmp_path / "vda.img").exists()


@pytest.mark.parametrize(
    "disk,expected",
    [
        ("<disk type='file' device='disk'><source file='/a'/></disk>", [("path", None, "/a")]),
        ("<disk type='file' device='cdrom'><source file='/a.iso'/></disk>", []),
        ("<disk type='file' device='disk'><source file='/a'/><readonly/></disk>", []),
        ("<disk type='file' device='disk'><source file='/a'/><shareable/></disk>", []),
        ("<disk type='volume' device='disk'><source pool='p' volume='v'/></disk>", [("volume", "p", "v")]),
        ("<disk type='block' device='disk'><source dev='/dev/x'/></disk>", [("path", None, "/dev/x")]),
    ],
)
def test_referenced_storage(disk, expected):
    assert referenced_storage(parse_xml("<domain><devices>%s</devices></domain>" % disk)) == expected


def test_machine_aliases_from_capabilities(test_conn):
    aliases = machine_aliases(test_conn)
    equal = domain_equivalence({"q35": "pc-q35-7.2"})
    node = parse_xml("<type machine='q35'>hvm</type>")
    assert isinstance(aliases, dict)
    assert equal(node, "machine", "q35", "pc-q35-7.2") and not equal(node, "machine", "pc", "pc-q35-7.2")
    assert not equal(parse_xml("<other/>"), "machine", "q35", "pc-q35-7.2")


def test_machine_aliases_read_once_per_connection(test_conn, monkeypatch):
    """A batch of guests compares machine types for each guest: the capabilities are read once."""
    reads = []
    conn = test_conn.conn

    class Counting:
        def __getattr__(self, name):
            return getattr(conn, name)

        def getCapabilities(self):
            reads.append(1)
            return conn.getCapabilities()

    monkeypatch.setattr(test_conn, "conn", Counting())
    first = machine_aliases(test_conn)
    assert machine_aliases(test_conn) is first
    assert len(reads) == 1


@pytest.mark.parametrize(
    "tag,attribute,intent,live,expected",
    [
        ("graphics", "port", "-1", "5901", True),
        ("graphics", "port", "5900", "5901", False),
        ("cpu", "mode", "host-model", "custom", True),
        ("cpu", "mode", "host-passthrough", "custom", False),
        ("type", "machine", "q35", "pc-q35-7.2", True),
    ],
)
def test_live_equivalence(tag, attribute, intent, live, expected):
    equal = live_equivalence({"q35": "pc-q35-7.2"})
    assert equal(parse_xml("<%s/>" % tag), attribute, intent, live) is expected


class _StubbornDomain:
    """A running guest that ignores the ACPI power button (only the shutdown wait is faked)."""

    def __init__(self):
        self.destroyed = False

    def name(self):
        return "virtops-test-stubborn"

    def state(self):
        return (5, 2) if self.destroyed else (1, 1)

    def shutdown(self):
        return 0

    def destroy(self):
        self.destroyed = True
        return 0


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("force", [False, True])
def test_shutdown_timeout_then_force(test_conn, force):
    clock = _Clock()
    dom = _StubbornDomain()
    life = Lifecycle(test_conn, dom, shutdown_timeout=3, force=force, sleep=clock.sleep, clock=clock)
    if force:
        life.shutdown()
        assert dom.destroyed and life.actions == ["shutdown", "destroy"]
    else:
        with pytest.raises(VirtopsError, match=r"did not shut down within 3s.*set force=true"):
            life.shutdown()
        assert not dom.destroyed
    assert clock.now >= 3


class _LateDomain(_StubbornDomain):
    """A guest that finishes its ACPI shutdown just after the wait gave up: destroy() finds it stopped."""

    def destroy(self):
        self.destroyed = True
        err = libvirt.libvirtError("Requested operation is not valid: domain is not running")
        err.err = (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, "domain is not running", 2, "", "", None, 0, 0)
        raise err


def test_force_after_timeout_accepts_a_guest_that_stopped_meanwhile(test_conn):
    clock = _Clock()
    dom = _LateDomain()
    life = Lifecycle(test_conn, dom, shutdown_timeout=1, force=True, sleep=clock.sleep, clock=clock)
    life.shutdown()
    assert life.actions == ["shutdown", "destroy"] and life.state() == "shutoff"


def test_force_after_timeout_still_fails_when_the_guest_keeps_running(test_conn):
    class _Refusing(_StubbornDomain):
        def destroy(self):
            err = libvirt.libvirtError("internal error: cannot kill")
            err.err = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU, "cannot kill", 2, "", "", None, 0, 0)
            raise err

    clock = _Clock()
    life = Lifecycle(test_conn, _Refusing(), shutdown_timeout=1, force=True, sleep=clock.sleep, clock=clock)
    with pytest.raises(VirtopsError, match="cannot destroy guest virtops-test-stubborn"):
        life.shutdown()


# ------------------------------------------------------------------ secrets (issue 11 item 2)

VNC = "<graphics type='vnc' port='-1' autoport='yes' passwd='%s'/>"


def _secure_xml(conn, name=NAME):
    return parse_xml(conn.lookup_domain(name).XMLDesc(VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE))


def test_a_vnc_password_is_applied_compared_and_never_stored_or_returned(test_conn):
    first = run(test_conn, xml=domain_xml(extra="").replace("</devices>", VNC % "s3cret-one" + "</devices>"))
    assert first["changed"]
    assert _secure_xml(test_conn).find("devices/graphics").get("passwd") == "s3cret-one"
    stored = read_last_applied(_secure_xml(test_conn))
    assert stored.find("devices/graphics").get("passwd") == "********"
    assert "s3cret" not in str(first) and 'passwd="********"' in first["xml"]
    again = run(test_conn, xml=domain_xml().replace("</devices>", VNC % "s3cret-one" + "</devices>"))
    assert again["changed"] is False

    changed = run(test_conn, xml=domain_xml().replace("</devices>", VNC % "s3cret-two" + "</devices>"))
    assert changed["changed"] and "s3cret" not in str(changed)
    assert _secure_xml(test_conn).find("devices/graphics").get("passwd") == "s3cret-two"
    secrets = [entry for entry in changed["diff"] if "secret values" in entry["before_header"]]
    assert secrets and secrets[0]["after"] == "graphics/@passwd: ******** (new value)\n"

    removed = run(test_conn, xml=domain_xml().replace("</devices>", "<graphics type='vnc' port='-1' autoport='yes'/></devices>"))
    assert removed["changed"] and _secure_xml(test_conn).find("devices/graphics").get("passwd") is None


def test_check_mode_predicts_a_password_change_without_showing_it(test_conn):
    run(test_conn, xml=domain_xml().replace("</devices>", VNC % "s3cret-one" + "</devices>"))
    check = run(test_conn, check=True, xml=domain_xml().replace("</devices>", VNC % "s3cret-two" + "</devices>"))
    assert check["changed"] and "s3cret" not in str(check)
    assert _secure_xml(test_conn).find("devices/graphics").get("passwd") == "s3cret-one"


def test_a_password_from_an_older_version_in_metadata_is_masked_everywhere(test_conn):
    """A guest whose <metadata> holds a password (written before it was masked) shows it nowhere."""
    from ansible_collections.virtops.kvm.plugins.module_utils._xml import write_last_applied

    xml = domain_xml().replace("</devices>", VNC % "s3cret-old" + "</devices>")
    root = parse_xml(xml)
    write_last_applied(root, parse_xml(xml))
    test_conn.conn.defineXML(to_string(root))
    (guest,) = gather_domains(test_conn, name=NAME, include_xml=True)
    assert "s3cret" not in guest["xml"] and "********" in guest["xml"]
    once = run(test_conn, xml=xml)
    assert once["changed"] and "s3cret" not in str(once)
    assert read_last_applied(_secure_xml(test_conn)).find("devices/graphics").get("passwd") == "********"
    assert not run(test_conn, xml=xml)["changed"]


def test_secret_values_of_intents():
    from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import mask_secrets, secret_values_of_text

    xml = (
        "<domain><devices><graphics type='vnc' passwd='a1'/><graphics type='spice' passwd='b2'/>"
        "<disk type='network' device='disk'><source protocol='https' name='x'><host name='h'/>"
        "<cookies><cookie name='c'>c3</cookie></cookies></source><target dev='vda'/></disk></devices></domain>"
    )
    assert secret_values_of_text(xml) == ["a1", "b2", "c3"]
    assert secret_values_of_text("<not xml") == [] and secret_values_of_text(None) == []
    masked = mask_secrets(parse_xml(xml))
    assert [g.get("passwd") for g in masked.iter("graphics")] == ["********", "********"]
    assert masked.find("devices/disk/source/cookies/cookie").text == "********"


# ------------------------------------------------------------------ several guests (domains)


def batch(conn, entries, check=False, **top):
    p = params(name=None, xml=None, domains=entries, **top)
    result, warnings = finish(ensure_domain(Backends(libvirt=conn), p, check), True)
    result["warnings"] = warnings
    return result


def _entries(*names, **extra):
    return [dict(name=name, xml=domain_xml(name=name), **extra) for name in names]


def test_several_guests_are_defined_once_over_one_connection(test_conn):
    names = (NAME, *OTHERS)
    check = batch(test_conn, _entries(*names), check=True)
    assert check["changed"] and [r["name"] for r in check["results"]] == list(names)
    assert all(test_conn.lookup_domain(name) is None for name in names)
    first = batch(test_conn, _entries(*names), state="running")
    assert first["changed"] and all(r["changed"] and r["domain"]["state"] == "running" for r in first["results"])
    assert [r["actions"] for r in first["results"]] == [["start"]] * 3
    assert len([d for d in first["diff"] if "inactive XML" in d["before_header"]]) == 3
    again = batch(test_conn, _entries(*names), state="running")
    assert again["changed"] is False and not any(r["changed"] for r in again["results"]) and "diff" not in again
    # an entry's own state wins over the top-level one
    mixed = batch(test_conn, [dict(name=NAME, state="shutdown"), dict(name=OTHERS[0])], state="running")
    assert [r["changed"] for r in mixed["results"]] == [True, False]
    assert test_conn.lookup_domain(NAME).isActive() == 0


def test_a_failing_guest_names_itself_and_reports_the_guests_before_it(test_conn):
    entries = [*_entries(NAME), dict(name=OTHERS[0], xml=domain_xml(name=OTHERS[0], extra="<bogus/>")), *_entries(OTHERS[1])]
    with pytest.raises(VirtopsError) as err:
        batch(test_conn, entries)
    msg = err.value.msg
    assert msg.startswith("domains[1] (guest %s) failed: cannot define guest %s" % (OTHERS[0], OTHERS[0]))
    assert "the guests before it were handled and their changes stay: %s" % NAME in msg and "entries after it were not touched" in msg
    details = err.value.details
    assert details["failed_guest"] == OTHERS[0] and details["changed"] is True
    assert [r["name"] for r in details["results"]] == [NAME]
    assert test_conn.lookup_domain(NAME) is not None
    assert test_conn.lookup_domain(OTHERS[0]) is None and test_conn.lookup_domain(OTHERS[1]) is None


@pytest.mark.parametrize(
    "entries,words",
    [
        ([dict(name=NAME, xml=domain_xml())] * 2, "both name guest %s" % NAME),
        ([dict(name=NAME, xml=domain_xml()), dict(name=OTHERS[0], xml="<domain><name>x")], "domains[1] (guest %s): xml is not well-formed" % OTHERS[0]),
        ([dict(name=NAME, xml=domain_xml()), dict(name="a/b", xml=None)], "domains[1].name 'a/b' contains '/'"),
        ([dict(name=NAME, xml=domain_xml()), dict(name=OTHERS[0], xml=domain_xml(name=NAME))], "does not match name=%s" % OTHERS[0]),
    ],
)
def test_bad_entries_fail_before_any_guest_is_touched(test_conn, entries, words):
    with pytest.raises(ValidationError) as err:
        batch(test_conn, entries)
    assert words in err.value.msg
    assert test_conn.lookup_domain(NAME) is None


def test_name_and_domains_are_exclusive(test_conn):
    with pytest.raises(ValidationError, match="mutually exclusive"):
        ensure_domain(Backends(libvirt=test_conn), params(domains=_entries(OTHERS[0])), False)
    assert test_conn.lookup_domain(OTHERS[0]) is None


class _RunningDom:
    """A running persistent guest whose live XML is given (what libvirt shows after firmware autoselection)."""

    def __init__(self, live):
        self.live = live

    def isActive(self):
        return True

    def isPersistent(self):
        return True

    def name(self):
        return "virtops-test-uefi"

    def XMLDesc(self, flags):
        return self.live


class _Caps:
    def getCapabilities(self):
        return "<capabilities/>"


def test_a_uefi_guest_with_its_firmware_resolved_needs_no_restart():
    intent = parse_xml(
        "<domain type='qemu'><name>virtops-test-uefi</name><os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type>"
        "<firmware><feature enabled='no' name='secure-boot'/></firmware></os></domain>"
    )
    live = (
        "<domain type='qemu' id='1'><name>virtops-test-uefi</name><os><type arch='x86_64' machine='q35'>hvm</type>"
        "<firmware><feature enabled='no' name='secure-boot'/></firmware>"
        "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/virtops-test-uefi_VARS.fd</nvram></os></domain>"
    )
    client = LibvirtClient(_Caps(), uri="test:///caps-only")
    assert pending_restart(client, _RunningDom(live), intent) is False
    # a guest started before the intent asked for UEFI (no loader in its live XML) does need one
    bios = "<domain type='qemu' id='1'><name>virtops-test-uefi</name><os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
    assert pending_restart(client, _RunningDom(bios), intent) is True
