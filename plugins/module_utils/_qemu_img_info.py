# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""qemu_img_info: what ``qemu-img info --force-share`` says about an image; never changes anything."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import validate_path
from ansible_collections.virtops.kvm.plugins.module_utils._image import ImageReader, summary


def ensure_qemu_img_info(backends, params, check_mode):  # pylint: disable=unused-argument  # read-only: check mode changes nothing
    """``exists``, ``image``, ``summary`` and, with ``backing_chain``, ``chain`` of ``params['path']``."""
    path = validate_path(params.get("path"), "path")
    img = ImageReader(backends.commands)
    chain = bool(params.get("backing_chain"))
    infos = img.info(path, chain=chain)
    if chain and infos is not None:
        info = infos[0] if infos else None
    else:
        info, infos = infos, ([infos] if infos else [])
    result = {"changed": False, "exists": info is not None, "image": info or {}, "summary": summary(info), "warnings": []}
    if chain:
        result["chain"] = [{"image": item, "summary": summary(item)} for item in infos or []]
    return result
