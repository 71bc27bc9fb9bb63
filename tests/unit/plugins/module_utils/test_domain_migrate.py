# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_migrate's planning: option validation, flags and parameters, the idempotence decision, job stats.

libvirt's test driver cannot migrate: the migration itself is exercised by the integration target
between two real hypervisors (tests/integration/targets/domain_migrate).
"""

from __future__ import annotations

import threading

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_migrate as dm
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError

BASE = dict(
    uri="qemu+tcp://10.0.0.1/system",
    name="g",
    dest_uri="qemu+tcp://10.0.0.2/system",
    live=True,
    offline=False,
    postcopy=False,
    postcopy_after=None,
    auto_converge=False,
    bandwidth_mib=None,
    copy_storage="none",
    persistent=True,
    undefine_source=False,
    tunnelled=False,
    compressed=False,
    timeout=None,
    timeout_action="abort",
)


def params(**over):
    return dict(BASE, **over)


@pytest.mark.parametrize(
    "over, needle",
    [
        (dict(dest_uri="qemu:///system"), "not a remote QEMU URI"),
        (dict(dest_uri="qemu+tcp://10.0.0.1/system"), "cannot migrate to the host it runs on"),
        (dict(offline=True, postcopy=True), "postcopy does not apply"),
        (dict(offline=True, copy_storage="all"), "copy_storage must be none"),
        (dict(offline=True, persistent=False), "needs persistent=true"),
        (dict(postcopy=True, live=False), "needs live=true"),
        (dict(postcopy_after=3), "postcopy_after needs postcopy=true"),
        (dict(bandwidth_mib=-1), "must not be negative"),
    ],
)
def test_validate_bad_input(over, needle):
    with pytest.raises(ValidationError, match=needle):
        dm.validate(params(**over))


def test_flags_default_live_persistent_p2p():
    _flags, names = dm.migration_flags(params())
    assert names == ["live", "peer2peer", "persist_dest", "abort_on_error"]


def test_flags_everything():
    over = dict(postcopy=True, auto_converge=True, tunnelled=True, compressed=True, copy_storage="incremental", undefine_source=True)
    _flags, names = dm.migration_flags(params(**over))
    assert set(names) == {
        "live",
        "peer2peer",
        "persist_dest",
        "abort_on_error",
        "postcopy",
        "auto_converge",
        "tunnelled",
        "compressed",
        "non_shared_inc",
        "undefine_source",
    }


def test_flags_offline_and_timeout_postcopy():
    assert "offline" in dm.migration_flags(params(offline=True))[1]
    assert "live" not in dm.migration_flags(params(offline=True))[1]
    assert "postcopy" in dm.migration_flags(params(timeout=10, timeout_action="postcopy"))[1]


def test_params_bandwidth():
    assert dm.migration_params(params(bandwidth_mib=4)) == {"bandwidth": 4}
    assert dm.migration_params(params()) == {}


@pytest.mark.parametrize(
    "src, dst, over, expected",
    [
        ("running", None, {}, "migrate"),
        ("running", "shutoff", {}, "migrate"),
        (None, "running", {}, "none"),
        ("shutoff", "running", {}, "none"),
        ("shutoff", None, dict(offline=True), "migrate"),
        ("shutoff", "shutoff", dict(offline=True), "none"),
        (None, "shutoff", dict(offline=True), "none"),
    ],
)
def test_decide(src, dst, over, expected):
    assert dm.decide("g", src, dst, params(**over)) == expected


@pytest.mark.parametrize(
    "src, dst, over, needle",
    [
        ("running", "running", {}, "refusing to migrate over a running copy"),
        (None, None, {}, "exists neither"),
        ("shutoff", None, {}, "use offline=true"),
        ("running", None, dict(offline=True), "offline=true moves only a defined, stopped guest"),
        (None, None, dict(offline=True), "exists neither"),
    ],
)
def test_decide_bad_input(src, dst, over, needle):
    with pytest.raises(ValidationError, match=needle):
        dm.decide("g", src, dst, params(**over))


def test_stats_from_completed_job():
    raw = {"downtime": 214, "time_elapsed": 973, "data_processed": 1000, "memory_processed": 900, "disk_processed": 100, "memory_iteration": 3}
    stats = dm.stats_from(raw, {"postcopy": False, "timeout_action": None})
    assert stats["downtime_ms"] == 214 and stats["total_time_ms"] == 973 and stats["data_transferred_bytes"] == 1000
    assert stats["postcopy_used"] is False
    assert dm.stats_from({}, {"postcopy": True, "timeout_action": "postcopy"})["postcopy_used"] is True


class FakeDom:
    """A domain whose migration job reports a growing memory iteration."""

    def __init__(self):
        self.calls = []
        self.iteration = 0

    def jobStats(self, _flags):
        self.iteration += 1
        return {"type": 2, "memory_iteration": self.iteration}

    def migrateStartPostCopy(self, _flags):
        self.calls.append("postcopy")

    def abortJob(self):
        self.calls.append("abort")

    def suspend(self):
        self.calls.append("suspend")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_watch(over, polls):
    dom, clock, done = FakeDom(), Clock(), threading.Event()
    count = [0]

    def sleep(_seconds):
        clock.now += 1
        count[0] += 1
        if count[0] >= polls:
            done.set()

    taken = dm.watch(dom, params(**over), done, clock=clock, sleep=sleep)
    return dom, taken


def test_watch_switches_to_postcopy_when_precopy_does_not_converge():
    dom, taken = run_watch(dict(postcopy=True), polls=5)
    assert taken["postcopy"] is True
    assert dom.calls == ["postcopy"]


def test_watch_timeout_abort():
    dom, taken = run_watch(dict(timeout=2, timeout_action="abort"), polls=6)
    assert taken["timeout_action"] == "abort"
    assert dom.calls == ["abort"]


def test_watch_timeout_suspend():
    dom, taken = run_watch(dict(timeout=2, timeout_action="suspend"), polls=6)
    assert dom.calls == ["suspend"] and taken["postcopy"] is False


def test_unreachable_destination_bad_input():
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError

    def open_dest(uri):
        raise LibvirtError("unable to connect to server at '10.0.0.2:16509': No route to host")

    class Backends:
        libvirt = object()

    with pytest.raises(LibvirtError, match=r"cannot reach the destination qemu\+tcp://10\.0\.0\.2/system: .*nothing was changed"):
        dm.ensure_domain_migrate(Backends(), params(), False, open_dest=open_dest)


def test_tls_bad_input_certificate_without_the_uri_name():
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError

    # libvirt 9.0's text when the destination's certificate does not name the URI's host
    def open_dest(uri):
        raise LibvirtError("authentication failed: Failed to verify peer's certificate")

    class Backends:
        libvirt = object()

    uri = "qemu+tls://10.0.0.12/system?pkipath=/srv/pki/a"
    with pytest.raises(LibvirtError) as info:
        dm.ensure_domain_migrate(Backends(), params(dest_uri=uri), False, open_dest=open_dest)
    msg = info.value.msg
    assert msg.startswith("cannot reach the destination %s: authentication failed: Failed to verify peer's certificate (" % uri)
    assert "must name 10.0.0.12 among its subjectAltName names" in msg
    assert "signed by the CA in /srv/pki/a/cacert.pem" in msg
    assert msg.endswith("; nothing was changed")


@pytest.mark.parametrize(
    "uri, message, expected",
    [
        ("qemu+tls://hv2.example/system", "Failed to verify peer's certificate", "must name hv2.example among"),
        ("qemu+tls://hv2.example/system", "Failed to verify peer's certificate", "the CA in /etc/pki/CA/cacert.pem"),
        ("qemu+tls://[fd00::2]:16515/system?pkipath=/p/", "Certificate has expired", "must name fd00::2 among"),
        ("qemu+tls://[fd00::2]:16515/system?pkipath=/p/", "Certificate has expired", "the CA in /p/cacert.pem,"),
    ],
)
def test_tls_hint(uri, message, expected):
    assert expected in dm.tls_hint(uri, message)


@pytest.mark.parametrize(
    "uri, message",
    [
        # another transport, or a TLS failure that is not about a certificate: no hint
        ("qemu+tcp://10.0.0.2/system", "Failed to verify peer's certificate"),
        ("qemu+ssh://10.0.0.2/system", "certificate"),
        ("qemu+tls://10.0.0.2/system", "unable to connect to server at '10.0.0.2:16514': No route to host"),
        ("qemu+tls://10.0.0.2/system", None),
    ],
)
def test_tls_hint_none_for_other_failures(uri, message):
    assert dm.tls_hint(uri, message) == ""


# ---------------------------------------------------------------------------------------------
# The CPU check. libvirt's test driver has neither getDomainCapabilities nor compareHypervisorCPU,
# so a connection that answers as libvirt 9.0 does (the capabilities and error texts below are
# what the two private daemons of the integration target returned) stands in for the destination
# and the source. The integration target proves the same refusal against the real daemons.
# ---------------------------------------------------------------------------------------------

CAPS = """<domainCapabilities><cpu>
  <mode name='host-passthrough' supported='no'/>
  <mode name='maximum' supported='yes'/>
  <mode name='host-model' supported='yes'>
    <model fallback='forbid'>Opteron_G3</model>
    <vendor>AMD</vendor>
    <maxphysaddr mode='passthrough' limit='40'/>
    <feature policy='require' name='avx'/>
    <feature policy='require' name='avx2'/>
  </mode>
</cpu></domainCapabilities>"""


class CPUError(Exception):
    """Stands for libvirt.libvirtError with a code, an error domain and libvirt's text."""

    def __init__(self, code, domain, text):
        super().__init__(text)
        self.code, self.domain, self.text = code, domain, text

    def get_error_code(self):
        return self.code

    def get_error_domain(self):
        return self.domain

    def get_error_message(self):
        return self.text


class CPUConn:
    """A destination (or source) connection: its domain capabilities and its verdict on a CPU."""

    def __init__(self, caps=CAPS, verdict=2):
        self.caps, self.verdict, self.compared = caps, verdict, []

    def getDomainCapabilities(self, *_args):
        return self.caps

    def compareHypervisorCPU(self, _emulator, _arch, _machine, _virttype, xml, _flags):
        self.compared.append(xml)
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


def cpu_client(**kwargs):
    from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient

    return LibvirtClient(CPUConn(**kwargs), uri="qemu+tcp://10.0.0.2/system")


def guest(cpu):
    from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

    return parse_xml("<domain type='qemu'>%s<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>" % cpu)


AVX2 = "<cpu mode='custom' match='exact' check='full'><model fallback='forbid'>qemu64</model><feature policy='require' name='avx2'/></cpu>"
NO_AVX2 = CPUError(91, 31, "the CPU is incompatible with host CPU: Host CPU does not provide required features: avx2")


def test_cpu_compatible_custom_cpu_is_compared_as_it_is():
    dest = cpu_client()
    assert dm.check_cpu(dest, guest(AVX2)) == (None, "CPU: compatible with the destination")
    assert 'name="avx2"' in dest.conn.compared[0] and "qemu64" in dest.conn.compared[0]


def test_cpu_bad_input_feature_the_destination_lacks():
    """a required CPU feature the destination's hypervisor does not offer is refused with libvirt's reason"""
    problem, note = dm.check_cpu(cpu_client(verdict=NO_AVX2), guest(AVX2))
    assert note is None
    assert problem == "the guest's CPU is not compatible with the destination: " + NO_AVX2.text


def test_cpu_bad_input_model_the_destination_does_not_know():
    """a CPU model the destination's libvirt does not know (an error of its CPU driver) is an incompatibility, not a failed call"""
    unknown = CPUError(1, 31, "internal error: Unknown CPU model EPYC-Genoa")
    problem, _note = dm.check_cpu(cpu_client(verdict=unknown), guest("<cpu mode='custom' match='exact'><model>EPYC-Genoa</model></cpu>"))
    assert problem == "the guest's CPU is not compatible with the destination: internal error: Unknown CPU model EPYC-Genoa"


def test_cpu_other_libvirt_errors_are_not_taken_for_an_incompatibility():
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError

    lost = CPUError(39, 7, "End of file while reading data: Input/output error")
    with pytest.raises(LibvirtError, match="cannot compare the guest's CPU with the destination's: End of file"):
        dm.check_cpu(cpu_client(verdict=lost), guest(AVX2))


def test_cpu_incompatible_without_an_error():
    problem, _note = dm.check_cpu(cpu_client(verdict=0), guest(AVX2))
    assert problem == "the guest's CPU is not compatible with the destination"


def test_cpu_maximum_compares_what_the_source_offers():
    source, dest = cpu_client(), cpu_client()
    assert dm.check_cpu(dest, guest("<cpu mode='maximum' check='none'/>"), source) == (
        None,
        "CPU: maximum, what the source offers is compatible with the destination",
    )
    compared = dest.conn.compared[0]
    assert compared.startswith('<cpu mode="custom" match="exact">') and "Opteron_G3" in compared and 'name="avx2"' in compared
    assert "maxphysaddr" not in compared


def test_cpu_bad_input_maximum_where_the_destination_offers_less():
    """a maximum CPU whose source offers a feature the destination lacks is refused (libvirt itself would move it and the guest would lose the feature)"""
    problem, _note = dm.check_cpu(cpu_client(verdict=NO_AVX2), guest("<cpu mode='maximum'/>"), cpu_client())
    assert problem == "the guest's CPU (maximum: what the source's hypervisor offers) is not compatible with the destination: " + NO_AVX2.text


def test_cpu_bad_input_host_passthrough_not_offered():
    """host-passthrough where the destination does not offer it (a TCG host) is refused"""
    problem, _note = dm.check_cpu(cpu_client(), guest("<cpu mode='host-passthrough'/>"), cpu_client())
    assert problem == "the guest's CPU is host-passthrough, which the destination does not offer for qemu guests"


def test_cpu_maximum_without_a_source_model_is_not_compared():
    bare = CAPS.replace("supported='yes'>\n    <model", "supported='no'>\n    <model")
    dest = cpu_client()
    problem, note = dm.check_cpu(dest, guest("<cpu mode='maximum'/>"), cpu_client(caps=bare))
    assert problem is None and "not compared" in note and dest.conn.compared == []


def test_cpu_without_a_model_is_not_compared():
    dest = cpu_client()
    assert dm.check_cpu(dest, guest("<cpu mode='custom'><topology sockets='1' cores='2' threads='1'/></cpu>"))[0] is None
    assert dm.check_cpu(dest, guest(""))[0] is None
    assert dest.conn.compared == []
