# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""apparmor_local against a copy of this machine's /etc/apparmor.d and the real apparmor_parser."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _apparmor as aa
from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS

PARSER = shutil.which("apparmor_parser") or "/usr/sbin/apparmor_parser"
QEMU_LOCAL = "/etc/apparmor.d/local/abstractions/libvirt-qemu"


class Runner:
    """The CommandRunner contract (run -> rc, out, err; CommandError on failure) over subprocess."""

    def __init__(self):
        self.calls = []

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


def ensure(fs, runner=None, **params):
    params.setdefault("block", "test")
    return aa.ensure_local(fs, params, runner or Runner(), parser=PARSER)


@pytest.mark.parametrize("profile, path", [
    ("libvirt-qemu", QEMU_LOCAL),
    ("virt-aa-helper", "/etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"),
    ("usr.sbin.libvirtd", "/etc/apparmor.d/local/usr.sbin.libvirtd"),
    ("/etc/apparmor.d/local/abstractions/libvirt-lxc", "/etc/apparmor.d/local/abstractions/libvirt-lxc"),
])
def test_local_file(profile, path):
    assert aa.local_file(profile) == path


@pytest.mark.parametrize("profile", ["/etc/apparmor.d/usr.sbin.libvirtd", "../usr.sbin.libvirtd", "/etc/passwd", "/etc/apparmor.d/local"])
def test_paths_outside_local_are_refused(profile):
    with pytest.raises(ValidationError, match=r"outside /etc/apparmor\.d/local/"):
        aa.local_file(profile)


@pytest.mark.parametrize("rules, ok", [
    (["/var/guests/** rwk,"], True),
    (["deny /srv/secret/** rw,", "# a comment", "include <abstractions/base>"], True),
    (["/var/guests/** rwk"], False),
    (["/a r,\n/b r,"], False),
])
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
    result = aa.ensure_local(fs, {"profile": "libvirt-qemu", "block": "c", "rules": ["/srv/x r,"]}, Runner(), check_mode=True, parser=PARSER)
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


@pytest.mark.parametrize("path, names", [
    ("/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", ["virt-aa-helper"]),
    ("/etc/apparmor.d/usr.sbin.libvirtd", ["libvirtd", "qemu_bridge_helper"]),
    ("/etc/apparmor.d/libvirt/TEMPLATE.qemu", ["LIBVIRT_TEMPLATE"]),
    ("/etc/apparmor.d/libvirt/libvirt-0000", ["libvirt-0000"]),  # no file: its basename
])
def test_profile_names(fs, path, names):
    assert aa.profile_names(fs, path) == names


@pytest.mark.parametrize("loaded, reloaded", [
    (["virt-aa-helper", "libvirt-0000"], ["/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", "/etc/apparmor.d/libvirt/libvirt-0000"]),
    (["libvirt-0000"], ["/etc/apparmor.d/libvirt/libvirt-0000"]),  # virt-aa-helper disabled: not loaded by a "reload"
    (["virt-aa-helper"], ["/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper"]),  # the guest is not running
    ([], []),
])
def test_only_loaded_profiles_are_reloaded(fs, loaded, reloaded):
    _loaded(fs, *loaded)
    compiled = ["/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", "/etc/apparmor.d/libvirt/TEMPLATE.qemu", "/etc/apparmor.d/libvirt/libvirt-0000"]
    assert aa.profiles_to_reload(fs, compiled) == reloaded


def test_backup_is_taken_of_the_previous_file(fs, tmp_path):
    copies = []

    def backup(path):
        dest = str(tmp_path / "backup")
        shutil.copy(path, dest)
        copies.append(path)
        return dest

    before = _text(fs)
    result = aa.ensure_local(fs, {"profile": "libvirt-qemu", "block": "b", "rules": ["/srv/b r,"]}, Runner(), backup=backup, parser=PARSER)
    assert copies == [fs.path(QEMU_LOCAL)]
    assert (tmp_path / "backup").read_text() == before
    assert result["backup_file"] == str(tmp_path / "backup")
