# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named blocks of rules in AppArmor's local override files (/etc/apparmor.d/local/...).

A change is compiled before it is written: the tree is copied to a temporary directory, the new
local file is put in the copy, and every profile that includes it (directly or through
abstractions) is compiled there with ``apparmor_parser -Q -K`` (no kernel load, no cache). A
rule the parser rejects fails the module with the parser's own message; the real file is never
touched. Only then is the real file replaced atomically and, if AppArmor is enabled in the
running kernel, the profiles using it are reloaded.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_info import gather_apparmor
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import hostfs_for

APPARMOR_D = "/etc/apparmor.d"
LOCAL = APPARMOR_D + "/local"
PROFILES = {
    "libvirt-qemu": LOCAL + "/abstractions/libvirt-qemu",
    "virt-aa-helper": LOCAL + "/usr.lib.libvirt.virt-aa-helper",
}
LOADED = "/sys/kernel/security/apparmor/profiles"
MARKER = "virtops.kvm"
_NOT_PROFILES = ("abstractions/", "tunables/", "local/", "abi/", "disable/", "force-complain/", "cache/", "cache.d/")
_INCLUDE = re.compile(r"^\s*#?include\s+(?:if\s+exists\s+)?[<\"]([^>\"]+)[>\"]", re.MULTILINE)
_RULE_END = (",", "{", "}")


def local_file(profile):
    """Host path of the local file ``profile`` names (a keyword, or a path below /etc/apparmor.d/local)."""
    if profile in PROFILES:
        return PROFILES[profile]
    path = profile if profile.startswith("/") else posixpath.join(LOCAL, profile)
    path = posixpath.normpath(path)
    if not path.startswith(LOCAL + "/") or path == LOCAL:
        raise ValidationError(
            "profile %r is outside %s/: this module only manages local override files "
            "(libvirt-qemu, virt-aa-helper, or a path below %s)" % (profile, LOCAL, LOCAL)
        )
    return path


def validate_rules(rules, block):
    cleaned = []
    for rule in rules or []:
        text = str(rule).strip()
        if not text:
            continue
        if "\n" in text or "\r" in text:
            raise ValidationError("rule %r spans several lines: give one rule per list item" % rule)
        if MARKER in text and ("BEGIN" in text or "END" in text):
            raise ValidationError("rule %r looks like a block marker; markers are written by the module" % rule)
        is_comment_or_include = text.startswith("#") or re.match(r"include\s", text)
        if not is_comment_or_include and not text.endswith(_RULE_END):
            raise ValidationError("rule %r in block %r has no trailing comma: AppArmor rules end with ',' (for example \"%s,\")" % (rule, block, text))
        cleaned.append(text)
    return cleaned


def _markers(block):
    return "# BEGIN %s %s" % (MARKER, block), "# END %s %s" % (MARKER, block)


def render(current, block, rules, present):
    """``current`` text with ``block`` set to ``rules`` (present) or removed; other lines kept as they are."""
    begin, end = _markers(block)
    lines = (current or "").splitlines()
    out, inside, replaced = [], False, False
    for line in lines:
        stripped = line.strip()
        if stripped == begin:
            inside = True
            if present and not replaced:
                out.extend([begin, *rules, end])
                replaced = True
            continue
        if inside:
            if stripped == end:
                inside = False
            continue
        out.append(line)
    if inside:
        raise HostError("block %r has a BEGIN marker and no END marker in the file: fix the file by hand" % block)
    if present and not replaced:
        out.extend([begin, *rules, end])
    if not out:
        return ""
    return "\n".join(out) + "\n"


# -- which profiles use a local file -------------------------------------------------------------
def _include_graph(tree):
    """{relative file: set of relative includes} for every file below ``tree``."""
    graph = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith("cache")]
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, tree)
            try:
                with open(full, encoding="utf-8", errors="replace") as handle:
                    graph[rel] = set(_INCLUDE.findall(handle.read()))
            except OSError:
                continue
    return graph


def users_of(tree, rel_target):
    """Profiles (relative paths) that include ``rel_target``, directly or through other includes."""
    graph = _include_graph(tree)
    seen, todo, profiles = {rel_target}, [rel_target], set()
    while todo:
        target = todo.pop()
        for rel, includes in graph.items():
            if target in includes and rel not in seen:
                seen.add(rel)
                todo.append(rel)
                if not rel.startswith(_NOT_PROFILES) and not os.path.basename(rel).startswith("."):
                    profiles.add(rel)
    return sorted(profiles)


def compile_check(fs, runner, target, content, parser="apparmor_parser"):
    """Compile every profile using ``target`` with ``content`` in a temporary copy of the tree.

    Returns the compiled profiles (host paths); raises ValidationError with the parser's message.
    """
    source = fs.path(APPARMOR_D)
    if not os.path.isdir(source):
        raise HostError("%s does not exist below %s: is AppArmor (the apparmor package) installed?" % (APPARMOR_D, fs.root))
    rel_target = posixpath.relpath(target, APPARMOR_D)
    workdir = tempfile.mkdtemp(prefix="virtops-apparmor-")
    try:
        tree = os.path.join(workdir, "apparmor.d")
        shutil.copytree(source, tree, symlinks=True, ignore=shutil.ignore_patterns("cache", "cache.d"))
        real_target = os.path.join(tree, rel_target)
        os.makedirs(os.path.dirname(real_target), exist_ok=True)
        with open(real_target, "w", encoding="utf-8") as handle:
            handle.write(content)
        profiles = users_of(tree, rel_target)
        to_compile = [os.path.join(tree, rel) for rel in profiles]
        if not profiles:
            # a local file no profile includes yet: compile it on its own inside a throw-away profile
            wrapper = os.path.join(workdir, "virtops-check")
            with open(wrapper, "w", encoding="utf-8") as handle:
                handle.write("#include <tunables/global>\nprofile virtops-check {\n  #include <%s>\n}\n" % rel_target)
            to_compile = [wrapper]
        for path in to_compile:
            try:
                runner.run([parser, "-Q", "-K", "--base", tree, "-I", tree, path], what="apparmor_parser")
            except CommandError as exc:
                message = "\n".join(line for line in (exc.stderr or exc.stdout or "").splitlines() if "Cache read/write disabled" not in line)
                raise ValidationError(
                    "the rules do not compile; %s was left untouched. apparmor_parser said: %s"
                    % (target, message.replace(workdir + "/apparmor.d", APPARMOR_D).strip()),
                    parser_output=message,
                ) from exc
        return [posixpath.join(APPARMOR_D, rel) for rel in profiles]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_PROFILE_DECL = re.compile(r'^[ \t]*(?:profile[ \t]+("[^"]+"|[^\s{]+)|("/[^"]+"|/[^\s{]+))[^\n]*\{[ \t]*(?:#[^\n]*)?$', re.MULTILINE)


def profile_names(fs, path):
    """Names the profile file ``path`` declares (``profile NAME ...{`` or ``/attach/path ...{``); its basename if none is found."""
    try:
        with open(fs.path(path), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""
    names = [(named or attached).strip('"') for named, attached in _PROFILE_DECL.findall(text)]
    return names or [posixpath.basename(path)]


def profiles_to_reload(fs, compiled):
    """Compiled profiles that are loaded in the kernel: virt-aa-helper's, running guests' libvirt-<uuid>.

    A profile that is not loaded (a guest that is not running, a profile disabled with aa-disable) is
    left alone: ``apparmor_parser -r`` would load it.
    """
    loaded = fs.read(LOADED) or ""
    names = {line.split(" (")[0].strip() for line in loaded.splitlines()}
    reload = []
    for path in compiled:
        if posixpath.basename(path).startswith("TEMPLATE."):
            continue
        if names.isdisjoint(profile_names(fs, path)):
            continue
        reload.append(path)
    return reload


# -- the runner ----------------------------------------------------------------------------------
def ensure_local(fs, params, runner, *, check_mode=False, backup=None, parser="apparmor_parser"):
    target = local_file(params["profile"])
    block = params["block"]
    if not block or "\n" in block:
        raise ValidationError("block must be a non-empty single-line name, got %r" % (block,))
    present = params.get("state", "present") == "present"
    rules = validate_rules(params.get("rules"), block) if present else []
    if present and not rules:
        raise ValidationError("state=present needs at least one rule in rules (use state=absent to remove block %r)" % block)
    exists = fs.exists(target)
    current = None
    if exists:
        try:
            with open(fs.path(target), encoding="utf-8") as handle:
                current = handle.read()
        except OSError as exc:
            raise HostError("cannot read %s: %s" % (target, exc)) from exc
    wanted = render(current, block, rules, present)
    changed = (current or "") != wanted and (exists or present)
    result = {"changed": changed, "path": target, "block": block, "compiled": [], "reloaded": [], "reload_skipped": [], "warnings": []}
    result["diff"] = {"before": current or "", "after": wanted if (exists or present) else "", "before_header": target, "after_header": target}
    if not changed:
        return result
    result["compiled"] = compile_check(fs, runner, target, wanted, parser=parser)
    if check_mode:
        return result
    if backup is not None and exists:
        result["backup_file"] = backup(fs.path(target))
    fs.write_atomic(target, wanted, mode=0o644)

    apparmor = gather_apparmor(fs)
    if not apparmor["enabled"]:
        result["warnings"].append("AppArmor is not enabled in the running kernel: %s was written but no profile was reloaded" % target)
        return result
    for path in profiles_to_reload(fs, result["compiled"]):
        cmd = [parser, "-r", path]
        if fs.root != "/":
            result["reload_skipped"].append(cmd)
            continue
        runner.run(cmd, what="apparmor_parser -r %s" % path)
        result["reloaded"].append(path)
    return result


def run_apparmor_local(module):
    """Module runner."""
    runner = CommandRunner(module)
    parser = runner.which("apparmor_parser")
    if not parser:
        raise HostError("apparmor_parser was not found: install the apparmor package; the module compiles every change before writing it")
    fs = hostfs_for(module, module.params["root"])
    result = ensure_local(fs, module.params, runner, check_mode=module.check_mode,
                          backup=module.backup_local if module.params["backup"] else None, parser=parser)
    for warning in result.pop("warnings"):
        module.warn(warning)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    return result
