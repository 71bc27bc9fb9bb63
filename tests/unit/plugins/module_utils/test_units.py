# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._units import MAX_BYTES, format_size, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("10G", 10 * 1024**3),
        ("10GiB", 10 * 1024**3),
        ("1GB", 10**9),
        ("2048kB", 2048 * 1000),
        ("2048KiB", 2048 * 1024),
        ("64k", 65536),
        (" 1 M ", 1024**2),
        ("3bytes", 3),
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


def test_default_unit_applies_to_bare_numbers():
    assert parse_size(4, default_unit="MiB") == 4 * 1024**2
    assert parse_size("4", default_unit="KiB") == 4096


@pytest.mark.parametrize("value", ["", "ten", "1.5G", "-1", "1 G B", "1Q", True, None, "1\n2"])
def test_not_sizes_are_clear_errors(value):
    with pytest.raises(ValidationError, match="capacity"):
        parse_size(value, "capacity")


def test_bounds():
    with pytest.raises(ValidationError, match="too large"):
        parse_size("9EiB")
    with pytest.raises(ValidationError, match="too small"):
        parse_size(0, minimum=1)
    assert parse_size(MAX_BYTES) == MAX_BYTES


@pytest.mark.parametrize(("size", "text"), [(10 * 1024**3, "10GiB"), (1536, "1536B"), (0, "0B"), (2048, "2KiB")])
def test_format_size(size, text):
    assert format_size(size) == text
