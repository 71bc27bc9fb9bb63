# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Arguments on the kernel command line of the next boot, for GRUB, grubby (BLS) and kernel-install.

Three layouts, detected in this order (or chosen with ``bootloader``):

- ``grubby``: ``grubby`` is installed and ``/boot/loader/entries`` holds BLS entries (EL 9). The
  entries' ``options`` lines are the command line; ``grubby --update-kernel=ALL`` changes them.
- ``kernel-install``: systemd-boot's ``loader.conf`` exists (or ``/etc/kernel/cmdline`` does and GRUB's
  defaults do not). ``/etc/kernel/cmdline`` is the command line; ``kernel-install add`` re-creates the
  installed kernels' entries with it.
- ``grub``: ``/etc/default/grub`` (Debian, Ubuntu, ...). The module writes its own drop-in,
  ``/etc/default/grub.d/99-virtops-kvm.cfg``, holding the resulting ``GRUB_CMDLINE_LINUX`` (and
  ``GRUB_CMDLINE_LINUX_DEFAULT`` when an argument had to come out of it), then runs ``update-grub``
  (or ``grub2-mkconfig``).

An argument ``key=value`` replaces every argument with the same key; a key given several times in one
call (``hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=512``) is kept as that ordered group.
``state=absent`` removes ``key`` with any value, or exactly ``key=value``. Under a fake root no
command runs: the files in the tree are changed as the command would change them and the command is
returned in ``skipped_commands``.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError

DROPIN = "/etc/default/grub.d/99-virtops-kvm.cfg"
GRUB_DEFAULTS = "/etc/default/grub"
GRUB_DROPIN_DIR = "/etc/default/grub.d"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
BLS_DIR = "/boot/loader/entries"
LOADER_CONFS = ("/boot/efi/loader/loader.conf", "/efi/loader/loader.conf", "/boot/loader/loader.conf")
GRUBBY = ("/usr/sbin/grubby", "/sbin/grubby")
GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
BOOTLOADERS = ("grub", "grubby", "kernel-install")
_ARG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(=[^\s\"'`$\\;]*)?\Z")
_BOOT_ONLY = ("BOOT_IMAGE", "initrd")


def arg_key(token):
    return token.split("=", 1)[0]


def validate_arguments(arguments):
    if not isinstance(arguments, list) or not arguments:
        raise ValidationError("arguments must be a non-empty list of kernel arguments such as intel_iommu=on")
    checked = []
    for arg in arguments:
        text = arg if isinstance(arg, str) else None
        if text is None or not _ARG.match(text):
            raise ValidationError(
                "%r is not a kernel argument this module can write: give key or key=value without spaces, quotes, "
                "'$', '`', ';' or backslashes (the key: letters, digits, '_', '.', '-')" % (arg,)
            )
        checked.append(text)
    return checked


def apply_arguments(tokens, arguments, state):
    """``tokens`` with ``arguments`` made present (grouped by key, in the order given) or absent."""
    if state == "absent":
        return [t for t in tokens if not any(t == a or (t.split("=", 1)[0] == a and "=" not in a) for a in arguments)]
    keys = {arg_key(a) for a in arguments}
    if [t for t in tokens if arg_key(t) in keys] == arguments:
        return list(tokens)
    return [t for t in tokens if arg_key(t) not in keys] + list(arguments)


def is_active(tokens, arguments, state):
    """Whether ``tokens`` (the running kernel's, or a generated linux line) already satisfy the request."""
    keys = {arg_key(a) for a in arguments}
    if state == "absent":
        return apply_arguments(tokens, arguments, state) == list(tokens)
    return [t for t in tokens if arg_key(t) in keys] == list(arguments)


# -- GRUB's shell defaults -----------------------------------------------------------------------
_SHELL_ASSIGN = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _expand(text, env):
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), text)


def shell_assignments(text, env):
    """Apply the simple ``VAR=value`` lines of a sourced shell file to ``env`` (what GRUB reads)."""
    for line in text.splitlines():
        match = _SHELL_ASSIGN.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        name, raw = match.groups()
        raw = raw.strip()
        if raw.startswith("'"):
            value = raw[1 : raw.find("'", 1)] if raw.count("'") >= 2 else raw[1:]
        elif raw.startswith('"'):
            end = raw.find('"', 1)
            value = _expand(raw[1:end] if end > 0 else raw[1:], env)
        else:
            value = _expand(raw.split("#", 1)[0].strip(), env)
        env[name] = value
    return env


class GrubLayout:
    name = "grub"

    def __init__(self, fs):
        self.fs = fs

    def _env(self, include_ours):
        env = {}
        shell_assignments(self.fs.read(GRUB_DEFAULTS, "") or "", env)
        for entry in self.fs.listdir(GRUB_DROPIN_DIR):
            path = "%s/%s" % (GRUB_DROPIN_DIR, entry)
            if entry.endswith(".cfg") and (include_ours or path != DROPIN):
                shell_assignments(self.fs.read(path, "") or "", env)
        return env

    def current(self):
        env = self._env(True)
        return env.get("GRUB_CMDLINE_LINUX", "").split() + env.get("GRUB_CMDLINE_LINUX_DEFAULT", "").split()

    def plan(self, arguments, state):
        """``(files {path: content or None}, commands, after tokens)``."""
        base = self._env(False)
        env = self._env(True)
        linux = env.get("GRUB_CMDLINE_LINUX", "").split()
        default = env.get("GRUB_CMDLINE_LINUX_DEFAULT", "").split()
        keys = {arg_key(a) for a in arguments}
        if state == "absent":
            linux, default = apply_arguments(linux, arguments, state), apply_arguments(default, arguments, state)
        elif [t for t in linux + default if arg_key(t) in keys] != arguments:
            linux = [t for t in linux if arg_key(t) not in keys] + arguments
            default = [t for t in default if arg_key(t) not in keys]
        lines = [
            "# Managed by virtops.kvm.kernel_cmdline: the kernel command line GRUB boots with.",
            "# Read after /etc/default/grub and the other drop-ins; run update-grub after editing.",
        ]
        if linux != base.get("GRUB_CMDLINE_LINUX", "").split():
            lines.append('GRUB_CMDLINE_LINUX="%s"' % " ".join(linux))
        if default != base.get("GRUB_CMDLINE_LINUX_DEFAULT", "").split():
            lines.append('GRUB_CMDLINE_LINUX_DEFAULT="%s"' % " ".join(default))
        content = "\n".join(lines) + "\n" if len(lines) > 2 else None
        return {DROPIN: content}, self.commands(), linux + default

    def commands(self):
        if self.fs.exists("/usr/sbin/update-grub"):
            return [["update-grub"]]
        cfg = next((c for c in GRUB_CFGS if self.fs.exists(c)), "/boot/grub2/grub.cfg")
        return [["grub2-mkconfig", "-o", cfg]]

    def generated_lacks(self, arguments, state):
        """True when grub.cfg exists and its first linux line does not carry the request (a stale grub.cfg)."""
        for cfg in GRUB_CFGS:
            text = self.fs.read(cfg)
            for line in (text or "").splitlines():
                words = line.split()
                if words and words[0] == "linux":
                    return not is_active(words[2:], arguments, state)
        return False


class KernelInstallLayout:
    name = "kernel-install"

    def __init__(self, fs):
        self.fs = fs

    def current(self):
        text = self.fs.read(KERNEL_CMDLINE)
        if text is None:
            text = self.fs.read("/proc/cmdline", "") or ""
        return [t for t in text.split() if arg_key(t) not in _BOOT_ONLY]

    def plan(self, arguments, state):
        after = apply_arguments(self.current(), arguments, state)
        return {KERNEL_CMDLINE: " ".join(after) + "\n"}, self.commands(), after

    def commands(self):
        cmds = []
        for version in self.fs.listdir("/lib/modules"):
            for image in ("/lib/modules/%s/vmlinuz" % version, "/boot/vmlinuz-%s" % version):
                if self.fs.exists(image):
                    cmds.append(["kernel-install", "add", version, image])
                    break
        return cmds

    def generated_lacks(self, arguments, state):
        return False


class GrubbyLayout:
    name = "grubby"

    def __init__(self, fs):
        self.fs = fs

    def entries(self):
        found = {}
        for name in self.fs.listdir(BLS_DIR):
            if name.endswith(".conf"):
                path = "%s/%s" % (BLS_DIR, name)
                text = _read(self.fs, path) or ""
                if "$kernelopts" in text:
                    raise HostError("%s uses $kernelopts from grubenv (EL 8 style); this module manages EL 9 BLS entries only" % path)
                found[path] = text
        if not found:
            raise HostError("grubby is installed but %s holds no BLS entries" % BLS_DIR)
        return found

    @staticmethod
    def _options(text):
        for line in text.splitlines():
            if line.startswith("options "):
                return line.split()[1:]
        return []

    def current(self):
        return self._options(next(iter(self.entries().values())))

    def plan(self, arguments, state):
        files, first_after, removed, added = {}, None, set(), []
        for path, text in self.entries().items():
            before = self._options(text)
            after = apply_arguments(before, arguments, state)
            first_after = after if first_after is None else first_after
            removed.update(t for t in before if t not in after)
            added.extend(t for t in after if t not in before and t not in added)
            lines = [line for line in text.splitlines() if not line.startswith("options ")] + ["options " + " ".join(after)]
            files[path] = "\n".join(lines) + "\n" if after != before else text
        if self.fs.exists(KERNEL_CMDLINE):
            cmdline = (self.fs.read(KERNEL_CMDLINE, "") or "").split()
            files[KERNEL_CMDLINE] = " ".join(apply_arguments(cmdline, arguments, state)) + "\n"
        cmd = ["grubby", "--update-kernel=ALL"]
        if removed:
            cmd.append("--remove-args=%s" % " ".join(sorted(removed)))
        if added:
            cmd.append("--args=%s" % " ".join(added))
        return files, [cmd], first_after

    def generated_lacks(self, arguments, state):
        return False


def detect(fs, wanted="auto"):
    if wanted == "grub":
        return GrubLayout(fs)
    if wanted == "grubby":
        return GrubbyLayout(fs)
    if wanted == "kernel-install":
        return KernelInstallLayout(fs)
    if any(fs.exists(p) for p in GRUBBY) and any(n.endswith(".conf") for n in fs.listdir(BLS_DIR)):
        return GrubbyLayout(fs)
    if any(fs.exists(p) for p in LOADER_CONFS):
        return KernelInstallLayout(fs)
    if fs.exists(GRUB_DEFAULTS) or fs.isdir(GRUB_DROPIN_DIR):
        return GrubLayout(fs)
    if fs.exists(KERNEL_CMDLINE):
        return KernelInstallLayout(fs)
    raise HostError(
        "no bootloader configuration found: neither grubby with BLS entries (%s), systemd-boot (%s), GRUB's %s nor %s; "
        "set bootloader to say which applies" % (BLS_DIR, ", ".join(LOADER_CONFS), GRUB_DEFAULTS, KERNEL_CMDLINE)
    )


def _read(fs, path):
    real = fs.path(path)
    try:
        with open(real, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostError("cannot read %s: %s" % (path, exc)) from exc


def _apply(backends, layout, files, commands):
    """Write the files (confined or grub/kernel-install) or run the tool (grubby on a real host)."""
    fs = backends.hostfs
    if layout.name != "grubby" or backends.confined:
        for path, content in files.items():
            if content is None:
                fs.remove(path)
            else:
                fs.write_atomic(path, content, mode=0o644)
    if backends.confined:
        return [], commands
    for cmd in commands:
        backends.commands.run(cmd, what=" ".join(cmd[:2]))
    return commands, []


def ensure_kernel_cmdline(backends, params, check_mode):
    """Make ``arguments`` present or absent on the next boot's kernel command line."""
    fs = backends.hostfs
    arguments = validate_arguments(params.get("arguments"))
    state = params.get("state") or "present"
    layout = detect(fs, params.get("bootloader") or "auto")
    lock = DROPIN if layout.name == "grub" else KERNEL_CMDLINE
    with fs.locked(lock):
        before = layout.current()
        files, commands, after = layout.plan(arguments, state)
        changes = {path: content for path, content in files.items() if _read(fs, path) != content}
        stale = not changes and layout.generated_lacks(arguments, state)
        changed = bool(changes) or stale
        ran, skipped = [], []
        if changed and not check_mode:
            ran, skipped = _apply(backends, layout, changes, commands)
            if layout.name == "grubby" and ran:
                now = layout.current()
                if now != after:
                    raise HostError("grubby ran but the BLS entries' options are %r, not %r" % (" ".join(now), " ".join(after)))
        elif changed:
            skipped = commands
    running = (fs.read("/proc/cmdline", "") or "").split()
    active = is_active(running, arguments, state)
    warnings = []
    if skipped and not check_mode:
        warnings.append(
            "root is %s, not /: %s was not run (it would act on this machine's boot configuration); run it inside that system"
            % (backends.root, " and ".join(" ".join(c) for c in skipped))
        )
    return {
        "changed": changed,
        "bootloader": layout.name,
        "cmdline": " ".join(after),
        "active": active,
        "reboot_required": not active,
        "commands": ran,
        "skipped_commands": skipped,
        "diff": {"before": " ".join(before) + "\n", "after": " ".join(after) + "\n"},
        "warnings": warnings,
    }
