# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print a seed ISO's label, extensions and files (read with pycdlib) as JSON."""

from __future__ import annotations

import io
import json
import sys

import pycdlib


def main(path):
    iso = pycdlib.PyCdlib()
    iso.open(path)
    files = {}
    for child in iso.list_children(rr_path="/"):
        if child.is_file():
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue().decode()
    result = {"label": iso.pvd.volume_identifier.decode().strip(), "joliet": iso.has_joliet(), "rock_ridge": iso.has_rock_ridge() is not None, "files": files}
    iso.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
