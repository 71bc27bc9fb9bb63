# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render the guides (playbooks in docs/guides/) as pages of the documentation site.

Each guide is a playbook the integration suite runs as it is. Its leading comment block is the
guide's text: the first line is the title, the rest is reStructuredText. The page shows that text
and then the whole playbook, so the site never holds a copy that could drift from what is tested.

    python3 docs/guides/render.py           write docs/docsite/rst/guides.rst and guide_<name>.rst
    python3 docs/guides/render.py --check   exit 1 when those files are not what the playbooks render to
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
RST = HERE.parent / "docsite" / "rst"
PREFIX = "ansible_collections.virtops.kvm.docsite."


def parse(path):
    """(title, text lines) from the guide's leading comment block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if line.strip() != "---"]
    comments = []
    for line in body:
        if not line.startswith("#"):
            break
        comments.append(line[2:] if line.startswith("# ") else line[1:])
    if not comments or not comments[0].strip():
        raise SystemExit("%s: a guide starts with a comment line that is its title" % path.name)
    return comments[0].strip(), comments[1:]


def page(path):
    title, text = parse(path)
    name = path.stem
    out = [".. _%sguide_%s:" % (PREFIX, name), "", title, "=" * len(title), ""]
    out += [line.rstrip() for line in text]
    out += ["", "The playbook (``docs/guides/%s``, run as it is by the integration tests):" % path.name, "", ".. code-block:: yaml", ""]
    out += [("   " + line).rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
    return "\n".join(out).rstrip() + "\n"


def index(guides):
    out = [
        ".. _%sguides:" % PREFIX,
        "",
        "Guides",
        "======",
        "",
        "Each guide is a playbook you can copy; the integration tests run these files as they are.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    out += ["   guide_%s" % path.stem for path in guides]
    return "\n".join(out) + "\n"


def rendered():
    guides = sorted(HERE.glob("*.yml"))
    files = {RST / "guides.rst": index(guides)}
    for path in guides:
        files[RST / ("guide_%s.rst" % path.stem)] = page(path)
    return files


def main(argv):
    files = rendered()
    stale = [path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    extra = [path for path in RST.glob("guide_*.rst") if path not in files]
    if "--check" in argv:
        for path in stale + extra:
            print("docs: %s is not what docs/guides renders to; run docs/guides/render.py" % path.relative_to(HERE.parent.parent))
        return 1 if stale or extra else 0
    for path in extra:
        path.unlink()
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
