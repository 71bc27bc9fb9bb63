# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Doc fragment for the libvirt connection options (twin of LIBVIRT_COMMON_ARGS)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI.
      - If not set, the environment variable E(LIBVIRT_DEFAULT_URI) is used, and then V(qemu:///system).
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (the C(python3-libvirt) package on Debian/Ubuntu and RHEL-like hosts)
"""
