# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""apparmor_local: named blocks of rules in AppArmor's local override files (/etc/apparmor.d/local/...).

A change is compiled before it is written: the tree is copied into a private temporary directory
(symlinks that point outside it are left out, none is followed or written through), the new local
file is put in the copy, and every profile that includes it (directly or through abstractions) is
compiled there with ``apparmor_parser -Q -K`` (no kernel load, no cache). A rule the parser rejects
fails the module with the parser's own message; the real file is never touched. Only then is the
real file replaced atomically and, if AppArmor is enabled in the running kernel, the profiles using
it are reloaded. The read, the compile check and the write happen under the file's lock, so two
concurrent runs both land their block. Lines outside the managed blocks are kept byte for byte.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import encode_raw, gather_apparmor, locked_files, read_raw
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import private_tempdir, validate_name

APPARMOR_D = "/etc/apparmor.d"
LOCAL = APPARMOR_D + "/local"
PROFILES = {
    "libvirt-qemu": LOCAL + "/abstractions/libvirt-qemu",
    "virt-aa-helper": LOCAL + "/usr.lib.libvirt.virt-aa-helper",
}
LOADED = "/sys/kernel/security/apparmor/profiles"
MARKER = "virtops.kvm"
BLOCK_NAME = r"[A-Za-z0-9_.+:@ -]+"
_NOT_PROFILES = ("abstractions/", "tunables/", "local/", "abi/", "disable/", "force-complain/", "cache/", "cache.d/")
_SKIPPED_DIRS = ("cache", "cache.d")
_INCLUDE = re.compile(r"^\s*#?include\s+(?:if\s+exists\s+)?[<\"]([^>\"]+)[>\"]", re.MULTILINE)
_RULE_END = (",", "{", "}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def local_file(profile):
    """Host path of the local file ``profile`` names (a keyword, or a path below /etc/apparmor.d/local)."""
    if profile in PROFILES:
        return PROFILES[profile]
    if not profile or re.search(r"[\x00-\x1f\x7f]", profile) or profile != profile.strip():
        raise ValidationError("profile %r is not a valid name or path: no control characters or surrounding white space" % (profile,))
    path = profile if profile.startswith("/") else posixpath.join(LOCAL, profile)
    path = posixpath.normpath(path)
    if not path.startswith(LOCAL + "/") or path == LOCAL:
        raise ValidationError(
            "profile %r is outside %s/: this module only manages local override files "
            "(libvirt-qemu, virt-aa-helper, or a path below %s)" % (profile, LOCAL, LOCAL)
        )
    return path


def validate_block(block):
    """The block name if it is one line of printable text without surrounding white space, else ValidationError."""
    return validate_name(block, "block", allow=BLOCK_NAME)


def _brace_depths(rules, block):
    """Refuse rules whose braces do not balance: a stray ``}`` would close the profile that includes the file."""
    depth = 0
    for rule in rules:
        if rule.startswith("#"):
            continue
        for char in rule:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth < 0:
                raise ValidationError("rule %r in block %r closes a brace that the block did not open: it would close the enclosing profile" % (rule, block))
    if depth:
        raise ValidationError("the rules of block %r open %d brace(s) they do not close: AppArmor rules must balance { and }" % (block, depth))


def validate_rules(rules, block):
    cleaned = []
    for rule in rules or []:
        text = str(rule).strip()
        if not text:
            continue
        if "\n" in text or "\r" in text:
            raise ValidationError("rule %r spans several lines: give one rule per list item" % rule)
        if _CONTROL.search(text):
            raise ValidationError("rule %r contains control characters, which no AppArmor rule holds" % rule)
        if MARKER in text and ("BEGIN" in text or "END" in text):
            raise ValidationError("rule %r looks like a block marker; markers are written by the module" % rule)
        is_comment_or_include = text.startswith("#") or re.match(r"include\s", text)
        if not is_comment_or_include and not text.endswith(_RULE_END):
            raise ValidationError("rule %r in block %r has no trailing comma: AppArmor rules end with ',' (for example \"%s,\")" % (rule, block, text))
        cleaned.append(text)
    _brace_depths(cleaned, block)
    return cleaned


def _markers(block):
    return "# BEGIN %s %s" % (MARKER, block), "# END %s %s" % (MARKER, block)


def _lines(text):
    """``text`` split after each newline only: every line keeps its own ending (CRLF, form feeds...)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def render(current, block, rules, present):
    """``current`` text with ``block`` set to ``rules`` (present) or removed; every other line kept byte for byte."""
    begin, end = _markers(block)
    new_block = "".join(line + "\n" for line in (begin, *rules, end))
    out, inside, replaced = [], False, False
    for line in _lines(current):
        stripped = line.strip()
        if stripped == begin:
            inside = True
            if present and not replaced:
                out.append(new_block)
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
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(new_block)
    return "".join(out)


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


def _copy_link(link, out, dest):
    """Recreate symlink ``link`` at ``out`` when it may point inside the copy; leave it out otherwise.

    An absolute target below /etc/apparmor.d (as the host sees it) becomes the same file of the copy;
    any other absolute target is not copied. Relative targets are checked once the whole tree is there
    (:func:`_drop_escaping_links`).
    """
    target = os.readlink(link)
    if os.path.isabs(target):
        host_target = posixpath.normpath(target)
        if not host_target.startswith(APPARMOR_D + "/"):
            return
        target = os.path.relpath(os.path.join(dest, posixpath.relpath(host_target, APPARMOR_D)), os.path.dirname(out))
    os.symlink(target, out)


def _drop_escaping_links(dest):
    """Remove every symlink of the copy that resolves outside it, until none is left."""
    while True:
        dropped = False
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    real = os.path.realpath(path)
                    if real != dest and not real.startswith(dest + "/"):
                        os.unlink(path)
                        dropped = True
        if not dropped:
            return


def _copy_file(path, out):
    """Copy a regular file without following a symlink on either side (the copy is created, never reused)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        src = os.open(path, flags)
    except OSError:
        return
    with os.fdopen(src, "rb") as reader:
        data = reader.read()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as writer:
        writer.write(data)


def copy_tree(source, dest):
    """Copy the AppArmor tree ``source`` to ``dest`` without following symlinks or keeping any that leave it."""
    for dirpath, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        out_dir = dest if rel == "." else os.path.join(dest, rel)
        os.makedirs(out_dir, mode=0o700, exist_ok=True)
        descend = []
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                _copy_link(full, os.path.join(out_dir, name), dest)
            elif name not in _SKIPPED_DIRS:
                descend.append(name)
        dirnames[:] = descend
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                _copy_link(full, os.path.join(out_dir, name), dest)
            elif os.path.isfile(full):
                _copy_file(full, os.path.join(out_dir, name))
    _drop_escaping_links(dest)


def _put_private(tree, rel_target, content):
    """Write ``content`` as ``tree/rel_target``: a new regular file, its directories real ones inside ``tree``."""
    real_target = os.path.join(tree, rel_target)
    parent = os.path.dirname(real_target)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    real_parent = os.path.realpath(parent)
    if real_parent != tree and not real_parent.startswith(tree + "/"):
        raise HostError("%s/%s resolves outside the tree: refusing to compile through it" % (APPARMOR_D, os.path.dirname(rel_target)))
    if os.path.lexists(real_target):
        os.unlink(real_target)
    fd = os.open(real_target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(encode_raw(content))


def compile_check(fs, runner, target, content, parser="apparmor_parser"):
    """Compile every profile using ``target`` with ``content`` in a private copy of the tree.

    Returns the compiled profiles (host paths); raises ValidationError with the parser's message.
    Nothing outside the private temporary directory is written, in check mode or not.
    """
    source = fs.path(APPARMOR_D)
    if not os.path.isdir(source):
        raise HostError("%s does not exist below %s: is AppArmor (the apparmor package) installed?" % (APPARMOR_D, fs.root))
    if os.path.islink(source) or not fs.inside(APPARMOR_D):
        raise HostError("%s below %s is a symlink: refusing to compile a tree that is not the one below root" % (APPARMOR_D, fs.root))
    rel_target = posixpath.relpath(target, APPARMOR_D)
    with private_tempdir(prefix="virtops-apparmor-") as private:
        workdir = os.path.realpath(private)
        tree = os.path.join(workdir, "apparmor.d")
        copy_tree(source, tree)
        _put_private(tree, rel_target, content)
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
                    "the rules do not compile; %s was left untouched. apparmor_parser said: %s" % (target, message.replace(tree, APPARMOR_D).strip()),
                    parser_output=message,
                ) from exc
        return [posixpath.join(APPARMOR_D, rel) for rel in profiles]


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
def backup_file(fs, target):
    """Copy ``target`` next to itself as ``<file>.<pid>.<timestamp>~`` (Ansible's backup naming); returns the copy's path."""
    real = fs.path(target)
    dest = "%s.%d.%s" % (real, os.getpid(), time.strftime("%Y-%m-%d@%H:%M:%S~"))
    shutil.copy2(real, dest)
    return dest


def _plan(fs, params):
    target = local_file(params["profile"])
    block = validate_block(params.get("block"))
    present = (params.get("state") or "present") == "present"
    rules = validate_rules(params.get("rules"), block) if present else []
    if present and not rules:
        raise ValidationError("state=present needs at least one rule in rules (use state=absent to remove block %r)" % block)
    if not fs.inside(target):
        raise ValidationError("%s below %s is a symlink that leads outside it: refusing to read or write through it" % (target, fs.root))
    current = read_raw(fs, target)
    exists = current is not None
    wanted = render(current, block, rules, present)
    changed = (current or "") != wanted and (exists or present)
    return target, block, current, exists, wanted if (exists or present) else "", changed


def _reload(backends, parser, compiled, result):
    fs = backends.hostfs
    apparmor = gather_apparmor(fs)
    if not apparmor["enabled"]:
        result["warnings"].append("AppArmor is not enabled in the running kernel: %s was written but no profile was reloaded" % result["path"])
        return
    for path in profiles_to_reload(fs, compiled):
        cmd = [parser, "-r", path]
        if backends.confined:
            result["reload_skipped"].append(cmd)
            continue
        backends.commands.run(cmd, what="apparmor_parser -r %s" % path)
        result["reloaded"].append(path)


def ensure_apparmor_local(backends, params, check_mode):
    """The module's entry point: set or remove one named block of rules in a local override file."""
    fs, runner = backends.hostfs, backends.commands
    parser = runner.which("apparmor_parser")
    if not parser:
        raise HostError("apparmor_parser was not found: install the apparmor package; the module compiles every change before writing it")
    target = local_file(params["profile"])
    with locked_files(fs, [target]):
        target, block, current, exists, wanted, changed = _plan(fs, params)
        result = {"changed": changed, "path": target, "block": block, "compiled": [], "reloaded": [], "reload_skipped": [], "warnings": []}
        result["diff"] = {"before": current or "", "after": wanted, "before_header": target, "after_header": target}
        if not changed:
            return result
        result["compiled"] = compile_check(fs, runner, target, wanted, parser=parser)
        if check_mode:
            return result
        if params.get("backup") and exists:
            result["backup_file"] = backup_file(fs, target)
        fs.write_atomic(target, encode_raw(wanted), mode=0o644)
    _reload(backends, parser, result["compiled"], result)
    return result
