# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Sphinx configuration of the collection's documentation site (built by `make docs`).

project = "virtops.kvm"
copyright = "virtops.kvm contributors"
title = "virtops.kvm documentation"
html_short_title = "virtops.kvm"

extensions = ["sphinx_antsibull_ext"]
pygments_style = "ansible"
highlight_language = "YAML+Jinja"
html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
display_version = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False
default_role = "any"
# Every reference must resolve: the build runs with warnings as errors. There is no intersphinx
# mapping (the build has no network); references into Ansible's own docs resolve to the anchors
# of ansible_references.rst.
nitpicky = True
