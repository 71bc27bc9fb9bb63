# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""apparmor_local against a copy of this machine's /etc/apparmor.d and the real apparmor_parser."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import shutil
import subprocess
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _apparmor_local as aa
from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

PARSER = shutil.which("apparmor_parser") or "/usr/sbin/apparmor_parser"
QEMU_LOCAL = "/etc/apparmor.d/local/abstractions/libvirt-qemu"


class Runner:
    """The CommandRunner contract (run -> rc, out, err; CommandError on failure) over subprocess."""

    def __init__(self):
        self.calls = []

    def which(self, name, required=False):
        del required
        return PARSER if name == "apparmor_parser" else shutil.which(name)

    def run(self, args, what=None):
        self.calls.append(list(args))
        proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
        if proc.returncode:
            raise CommandError("%s failed" % (what or args[0]), cmd=list(args), rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def fs(tmp_path):
    if not pathlib.Path(PARSER).exists() or not pathlib.Path("/etc/apparmor.d/abstractions/libvirt-qemu").exists():
        pytest.skip("needs apparmor_parser and libvirt's AppArmor profiles")
    shutil.copytree("/etc/apparmor.d", tmp_path / "etc/apparmor.d", symlinks=True)
    (tmp_path / "sys/module/apparmor/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/apparmor/parameters/enabled").write_text("N\n")
    return HostFS(str(tmp_path))


def _text(fs, path=QEMU_LOCAL):
    return pathlib.Path(fs.path(path)).read_text()


def ensure(fs, runner=None, check_mode=False, **params):
    params.setdefault("block", "test")
    return aa.ensure_apparmor_local(Backends(hostfs=fs, commands=runner or Runner(), root=fs.root), params, check_mode)


@pytest.mark.parametrize(
    "profile, path",
    [
        ("libvirt-qemu", QEMU_LOCAL),
        ("virt-aa-helper", "/etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"),
        ("usr.sbin.libvirtd", "/etc/apparmor.d/local/usr.sbin.libvirtd"),
        ("/etc/apparmor.d/local/abstractions/libvirt-lxc", "/etc/apparmor.d/local/abstractions/libvirt-lxc"),
    ],
)
def test_local_file(profile, path):
    assert aa.local_file(profile) == path


@pytest.mark.parametrize("profile", ["/etc/apparmor.d/usr.sbin.libvirtd", "../usr.sbin.libvirtd", "/etc/passwd", "/etc/apparmor.d/local"])
def test_paths_outside_local_are_refused(profile):
    with pytest.raises(ValidationError, match=r"outside /etc/apparmor\.d/local/"):
        aa.local_file(profile)


@pytest.mark.parametrize(
    "rules, ok",
    [
        (["/var/guests/** rwk,"], True),
        (["deny /srv/secret/** rw,", "# a comment", "include <abstractions/base>"], True),
        (["/var/guests/** rwk"], False),
        (["/a r,\n/b r,"], False),
    ],
)
def test_rule_validation(rules, ok):
    if ok:
        assert aa.validate_rules(rules, "b") == [r.strip() for r in rules]
    else:
        with pytest.raises(ValidationError):
            aa.validate_rules(rules, "b")


def test_render_keeps_hand_written_lines_and_other_blocks():
    text = "# hand written\n/opt/x r,\n# BEGIN virtops.kvm a\n/old r,\n# END virtops.kvm a\n/tail r,\n"
    new = aa.render(text, "a", ["/new r,"], True)
    assert new == "# hand written\n/opt/x r,\n# BEGIN virtops.kvm a\n/new r,\n# END virtops.kvm a\n/tail r,\n"
    both = aa.render(new, "b", ["/b r,"], True)
    assert both.endswith("# BEGIN virtops.kvm b\n/b r,\n# END virtops.kvm b\n")
    assert aa.render(both, "a", [], False) == "# hand written\n/opt/x r,\n/tail r,\n# BEGIN virtops.kvm b\n/b r,\n# END virtops.kvm b\n"


def test_users_of_the_qemu_abstraction(fs):
    assert aa.users_of(fs.path("/etc/apparmor.d"), "local/abstractions/libvirt-qemu") == ["libvirt/TEMPLATE.qemu"]
    assert aa.users_of(fs.path("/etc/apparmor.d"), "local/usr.lib.libvirt.virt-aa-helper") == ["usr.lib.libvirt.virt-aa-helper"]


def test_add_change_remove_idempotently(fs):
    runner = Runner()
    first = ensure(fs, runner, profile="libvirt-qemu", rules=["/var/guests/** rwk,"])
    assert first["changed"] is True
    assert first["compiled"] == ["/etc/apparmor.d/libvirt/TEMPLATE.qemu"]
    assert any(call[:3] == [PARSER, "-Q", "-K"] for call in runner.calls)
    assert "# BEGIN virtops.kvm test\n/var/guests/** rwk,\n# END virtops.kvm test\n" in _text(fs)
    assert any("not enabled" in w for w in first["warnings"])
    assert ensure(fs, profile="libvirt-qemu", rules=["/var/guests/** rwk,"])["changed"] is False
    changed = ensure(fs, profile="libvirt-qemu", rules=["/var/guests/** rw,"])
    assert changed["changed"] is True
    assert "/var/guests/** rw,\n" in changed["diff"]["after"]
    assert "/var/guests/** rwk,\n" in changed["diff"]["before"]
    removed = ensure(fs, profile="libvirt-qemu", state="absent")
    assert removed["changed"] is True
    assert "virtops.kvm" not in _text(fs)
    assert ensure(fs, profile="libvirt-qemu", state="absent")["changed"] is False


def test_check_mode_compiles_but_does_not_write(fs):
    before = _text(fs)
    result = ensure(fs, check_mode=True, profile="libvirt-qemu", block="c", rules=["/srv/x r,"])
    assert result["changed"] is True
    assert result["compiled"] == ["/etc/apparmor.d/libvirt/TEMPLATE.qemu"]
    assert _text(fs) == before


def test_invalid_rule_is_rejected_with_the_parser_message(fs):
    before = _text(fs)
    with pytest.raises(ValidationError) as err:
        ensure(fs, profile="libvirt-qemu", rules=["/var/guests/** rwq,"])
    assert "apparmor_parser said" in err.value.msg
    assert "/etc/apparmor.d/" in err.value.msg and "virtops-apparmor-" not in err.value.msg
    assert _text(fs) == before


def test_orphan_local_file_is_compiled_on_its_own(fs):
    result = ensure(fs, profile="virtops-test-orphan", rules=["/srv/orphan/** r,"])
    assert result["changed"] is True
    assert result["compiled"] == []
    with pytest.raises(ValidationError):
        ensure(fs, profile="virtops-test-orphan", rules=["/srv/orphan/** rq,"])


def _loaded(fs, *names):
    path = pathlib.Path(fs.path(aa.LOADED))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("%s (enforce)\n" % name for name in names))


def test_reload_when_enabled_is_reported_below_a_test_root(fs):
    pathlib.Path(fs.path("/sys/module/apparmor/parameters/enabled")).write_text("Y\n")
    _loaded(fs, "virt-aa-helper")
    result = ensure(fs, profile="virt-aa-helper", rules=["/var/guests/** r,"])
    assert result["reload_skipped"] == [[PARSER, "-r", "/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper"]]
    assert result["reloaded"] == []


@pytest.mark.parametrize(
    "path, names",
    [
        ("/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", ["virt-aa-helper"]),
        ("/etc/apparmor.d/usr.sbin.libvirtd", ["libvirtd", "qemu_bridge_helper"]),
        ("/etc/apparmor.d/libvirt/TEMPLATE.qemu", ["LIBVIRT_TEMPLATE"]),
        ("/etc/apparmor.d/libvirt/libvirt-0000", ["libvirt-0000"]),  # no file: its basename
    ],
)
def test_profile_names(fs, path, names):
    assert aa.profile_names(fs, path) == names


@pytest.mark.parametrize(
    "loaded, reloaded",
    [
        (["virt-aa-helper", "libvirt-0000"], ["/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", "/etc/apparmor.d/libvirt/libvirt-0000"]),
        (["libvirt-0000"], ["/etc/apparmor.d/libvirt/libvirt-0000"]),  # virt-aa-helper disabled: not loaded by a "reload"
        (["virt-aa-helper"], ["/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper"]),  # the guest is not running
        ([], []),
    ],
)
def test_only_loaded_profiles_are_reloaded(fs, loaded, reloaded):
    _loaded(fs, *loaded)
    compiled = ["/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", "/etc/apparmor.d/libvirt/TEMPLATE.qemu", "/etc/apparmor.d/libvirt/libvirt-0000"]
    assert aa.profiles_to_reload(fs, compiled) == reloaded


def test_backup_is_taken_of_the_previous_file(fs):
    before = _text(fs)
    result = ensure(fs, profile="libvirt-qemu", block="b", rules=["/srv/b r,"], backup=True)
    backup = pathlib.Path(result["backup_file"])
    assert backup.parent == pathlib.Path(fs.path(QEMU_LOCAL)).parent
    assert backup.name.startswith("libvirt-qemu.") and backup.name.endswith("~")
    assert backup.read_text() == before


# -- issue 11 item 8: the compile check never writes outside its private copy --------------------
def test_fault_absolute_symlink_outside_is_never_written_through(fs, tmp_path_factory):
    """local/abstractions/libvirt-qemu is an absolute link to a file outside root: check mode and failed runs leave it alone."""
    tmp_path = tmp_path_factory.mktemp("outside")
    outside = tmp_path / "outside-victim"
    outside.write_text("precious\n")
    local = pathlib.Path(fs.path(QEMU_LOCAL))
    local.unlink()
    local.symlink_to(outside)
    (pathlib.Path(fs.path("/etc/apparmor.d/local")) / "escape").symlink_to(tmp_path)
    with pytest.raises(ValidationError, match="leads outside"):
        ensure(fs, check_mode=True, profile="libvirt-qemu", rules=["/srv/x r,"])
    with pytest.raises(ValidationError, match="leads outside"):
        ensure(fs, profile="libvirt-qemu", rules=["/srv/x rq,"])
    assert outside.read_text() == "precious\n"


def test_fault_copy_drops_links_that_leave_the_tree(fs, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("outside")
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    (outside / "libvirt-qemu").write_text("precious\n")
    local_dir = pathlib.Path(fs.path("/etc/apparmor.d/local"))
    (local_dir / "abs-out").symlink_to(outside)
    (local_dir / "rel-out").symlink_to(os.path.relpath(outside, local_dir))
    (local_dir / "abs-in").symlink_to("/etc/apparmor.d/abstractions")
    dest = tmp_path / "copy"
    aa.copy_tree(fs.path("/etc/apparmor.d"), str(dest))
    assert not (dest / "local/abs-out").exists() and not (dest / "local/abs-out").is_symlink()
    assert not (dest / "local/rel-out").is_symlink()
    assert (dest / "local/abs-in").is_symlink()
    assert os.path.realpath(dest / "local/abs-in") == str(dest / "abstractions")
    # a compile through the tree with those links in place writes nothing outside
    ensure(fs, check_mode=True, profile="libvirt-qemu", rules=["/srv/x r,"])
    with pytest.raises(ValidationError):
        ensure(fs, profile="libvirt-qemu", rules=["/srv/x rq,"])
    assert (outside / "libvirt-qemu").read_text() == "precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["libvirt-qemu"]


@pytest.mark.parametrize(
    "block, message",
    [
        ("guest ", "not a valid name"),
        ("guest\r", "not a valid name"),
        ("gu\x0cest", "not a valid name"),
        ("", "not a valid name"),
    ],
)
def test_bad_input_block_names(fs, block, message):
    before = _text(fs)
    with pytest.raises(ValidationError, match=message):
        ensure(fs, profile="libvirt-qemu", block=block, rules=["/srv/x r,"])
    assert _text(fs) == before


@pytest.mark.parametrize(
    "rules",
    [
        ["}", "/srv/x r,"],
        ["/srv/x r,", "} profile evil {"],
        ["profile child {", "/srv/x r,"],
        ["/srv/{a,b r,"],
    ],
)
def test_bad_input_unbalanced_braces(fs, rules):
    before = _text(fs)
    with pytest.raises(ValidationError, match="brace"):
        ensure(fs, profile="libvirt-qemu", rules=rules)
    assert _text(fs) == before


def test_balanced_braces_are_accepted():
    assert aa.validate_rules(["/srv/{a,b}/** r,", "owner @{HOME}/x r,"], "b") == ["/srv/{a,b}/** r,", "owner @{HOME}/x r,"]


def test_hand_written_lines_kept_byte_for_byte(fs):
    hand = b"# hand-written\r\n/srv/hand r,\r\n\n  /srv/tab\tr,\n# no newline at the end"
    path = pathlib.Path(fs.path(QEMU_LOCAL))
    path.write_bytes(hand)
    ensure(fs, profile="libvirt-qemu", block="b1", rules=["/srv/b1 r,"])
    ensure(fs, profile="libvirt-qemu", block="b2", rules=["/srv/b2 r,"])
    data = path.read_bytes()
    assert data.startswith(hand + b"\n# BEGIN virtops.kvm b1\n")
    assert ensure(fs, profile="libvirt-qemu", block="b1", rules=["/srv/b1 r,"])["changed"] is False
    ensure(fs, profile="libvirt-qemu", block="b1", state="absent")
    ensure(fs, profile="libvirt-qemu", block="b2", state="absent")
    assert path.read_bytes() == hand + b"\n"


def test_render_keeps_form_feeds_and_crlf():
    hand = "# a\r\n\x0c\n/srv/x r,\x0c\r\n"
    added = aa.render(hand, "b", ["/srv/b r,"], True)
    assert added == hand + "# BEGIN virtops.kvm b\n/srv/b r,\n# END virtops.kvm b\n"
    assert aa.render(added, "b", [], False) == hand


class SlowRunner(Runner):
    """A parser stand-in that accepts everything, slowly: widens the read-compile-write window."""

    def run(self, args, what=None):
        time.sleep(0.05)
        return 0, "", ""


def _add_block(root, index):
    fs = HostFS(root)
    aa.ensure_apparmor_local(
        Backends(hostfs=fs, commands=SlowRunner(), root=root), {"profile": "libvirt-qemu", "block": "c%d" % index, "rules": ["/srv/c%d r," % index]}, False
    )


def test_fault_concurrent_runs_both_land_their_block(fs):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_block, args=(fs.root, index)) for index in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    text = _text(fs)
    for index in range(6):
        assert "# BEGIN virtops.kvm c%d\n/srv/c%d r,\n# END virtops.kvm c%d\n" % (index, index, index) in text
