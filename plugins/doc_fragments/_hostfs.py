# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Doc fragment for the host-filesystem root option (twin of HOSTFS_COMMON_ARGS)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  root:
    description:
      - Directory the host's C(/sys), C(/proc), C(/dev) and C(/etc) are found below.
      - For tests and for working on a mounted image; leave unset on a real host.
      - Each module's notes say which system-wide commands it does not run when this is not V(/).
    type: path
    default: /
"""
