# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Several objects of one module in one task (volume's ``volumes``, cloud_init_seed's ``seeds``).

Each entry takes the task's top-level value of every option it does not set. Every entry is checked
first (``check``); an error there fails the task before anything is touched. Then the entries run in
list order; when one fails, the task fails naming it, and the results of the entries before it (what
they changed) travel with the error.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError, VirtopsError


def merged_entries(params, key):
    """Each entry of ``params[key]`` with the task's top-level options filled in where it sets none."""
    top = {name: value for name, value in params.items() if name != key}
    entries = []
    for entry in params[key]:
        merged = dict(top)
        merged.update({name: value for name, value in entry.items() if value is not None})
        entries.append(merged)
    return entries


def run_entries(params, key, one, *, name_of, check=None, check_mode=False):
    """Run ``one(entry)`` for every merged entry of ``params[key]``; the combined result.

    ``name_of(entry)`` names an entry in messages and results; ``check(entry)`` validates one without
    touching anything. Each result keeps its own ``diff``; the task's ``diff`` lists the changed ones.
    """
    entries = merged_entries(params, key)
    seen = {}
    for index, entry in enumerate(entries):
        name = name_of(entry)
        if name in seen:
            raise ValidationError("%s[%d] and %s[%d] both name %s; give each once" % (key, seen[name], key, index, name))
        seen[name] = index
        if check is not None:
            try:
                check(entry)
            except ValidationError as exc:
                raise ValidationError("%s[%d] (%s): %s; nothing was changed" % (key, index, name, exc.msg), **exc.details) from exc
    results, diffs, warnings = [], [], []
    for index, entry in enumerate(entries):
        try:
            result = one(entry)
        except VirtopsError as exc:
            raise _entry_error(key, index, name_of(entry), exc, results, check_mode=check_mode) from exc
        warnings.extend(result.pop("warnings", None) or [])
        result["name"] = name_of(entry)
        if result["changed"] and result.get("diff") is not None:
            diffs.append(result["diff"])
        results.append(result)
    return dict(changed=any(result["changed"] for result in results), results=results, diff=diffs, warnings=warnings)


def _entry_error(key, index, name, exc, results, *, check_mode):
    done = [result["name"] for result in results if result["changed"]]
    if check_mode:
        earlier = "check mode: nothing was changed"
        done = []
    elif done:
        earlier = "the entries before it were handled and their changes stay (%s)" % ", ".join(done)
    elif results:
        earlier = "the entries before it needed no change"
    else:
        earlier = "it is the first entry, nothing was changed"
    details = dict(exc.details)
    details.update(failed=name, results=results, changed=bool(done))
    return VirtopsError("%s[%d] (%s) failed: %s. %s; the entries after it were not touched" % (key, index, name, exc.msg, earlier), **details)
