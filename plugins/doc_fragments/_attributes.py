# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared ``attributes`` descriptions; modules state their own support levels."""

from __future__ import annotations


class ModuleDocFragment:
    # Standard attributes of a module that changes things. Each module sets the support levels.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying the target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports C(changed=false) and changes nothing.
    support: full
"""

    # Attributes of a read-only C(_info) module.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying the target.
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: N/A
    details:
      - This action does not modify state.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports C(changed=false) and changes nothing.
    support: full
    details:
      - This action does not modify state.
"""
