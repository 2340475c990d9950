from __future__ import annotations

import contextlib
import hashlib
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml.errors import AttestationError, EvidenceFormatError, UnsupportedEvidenceError
from trustedml.hazmat.attestation.snp import (
    ARK_GUID,
    ASK_GUID,
    REPORT_SIZE,
    VCEK_GUID,
    VLEK_GUID,
    CertTable,
    SigningKey,
    SnpProduct,
    TcbVersion,
    parse_cert_table,
    parse_extended_report,
    parse_snp_report,
    product_from_cpuid,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "attestation" / "vectors" / "go-sev-guest"

# Distinct bytes per field, so a field read from the wrong offset cannot pass.
SIZES = {
    "family_id": 16,
    "image_id": 16,
    "report_data": 64,
    "measurement": 48,
    "host_data": 32,
    "id_key_digest": 48,
    "author_key_digest": 48,
    "report_id": 32,
    "report_id_ma": 32,
    "chip_id": 64,
}
FIELDS = {name: (hashlib.sha512(name.encode()).digest() * 2)[:n] for name, n in SIZES.items()}
CURRENT_TCB = bytes([0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])
REPORTED_TCB = bytes([0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28])
COMMITTED_TCB = bytes([0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38])
LAUNCH_TCB = bytes([0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48])
POLICY = 0x0000_0000_03FF_0A0B  # every defined bit set, ABI 10.11


def build_report(
    *,
    version: int = 3,
    policy: int = POLICY,
    signing_key: int = 0,
    mask_chip_key: bool = False,
    author_key_en: bool = False,
    cpuid: tuple[int, int, int] = (0x19, 0x11, 0x01),
    mit_vectors: tuple[int, int] = (0x0102030405060708, 0x1112131415161718),
    chip_id: bytes | None = None,
    reported_tcb: bytes = REPORTED_TCB,
    report_data: bytes | None = None,
    vmpl: int = 1,
) -> bytearray:
    """An unsigned report laid out per the ATTESTATION_REPORT table of the SNP ABI spec
    (CPUID bytes only for version >= 3, mitigation vectors only for version >= 5)."""
    b = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", b, 0x000, version, 0x0A0B0C0D, policy)
    b[0x010:0x020] = FIELDS["family_id"]
    b[0x020:0x030] = FIELDS["image_id"]
    struct.pack_into("<II", b, 0x030, vmpl, 1)
    b[0x038:0x040] = CURRENT_TCB
    struct.pack_into("<Q", b, 0x040, 0x25)
    key_info = int(author_key_en) | int(mask_chip_key) << 1 | signing_key << 2
    struct.pack_into("<I", b, 0x048, key_info)
    b[0x050:0x090] = report_data if report_data is not None else FIELDS["report_data"]
    b[0x090:0x0C0] = FIELDS["measurement"]
    b[0x0C0:0x0E0] = FIELDS["host_data"]
    b[0x0E0:0x110] = FIELDS["id_key_digest"]
    b[0x110:0x140] = FIELDS["author_key_digest"]
    b[0x140:0x160] = FIELDS["report_id"]
    b[0x160:0x180] = FIELDS["report_id_ma"]
    b[0x180:0x188] = reported_tcb
    if version >= 3:
        b[0x188:0x18B] = bytes(cpuid)
    b[0x1A0:0x1E0] = chip_id if chip_id is not None else FIELDS["chip_id"]
    b[0x1E0:0x1E8] = COMMITTED_TCB
    b[0x1E8:0x1EB] = bytes([7, 55, 1])  # current build, minor, major
    b[0x1EC:0x1EF] = bytes([6, 54, 1])  # committed build, minor, major
    b[0x1F0:0x1F8] = LAUNCH_TCB
    if version >= 5:
        struct.pack_into("<QQ", b, 0x1F8, *mit_vectors)
    b[0x2A0:0x2E8] = bytes(range(1, 73))  # R
    b[0x2E8:0x330] = bytes(range(101, 173))  # S
    return b


def milan_tcb(raw: bytes) -> tuple[int, int, int, int]:
    return raw[0], raw[1], raw[6], raw[7]


def turin_tcb(raw: bytes) -> tuple[int, int, int, int, int]:
    return raw[0], raw[1], raw[2], raw[3], raw[7]


def tcb_parts(tcb: TcbVersion) -> tuple[int, ...]:
    if tcb.fmc is None:
        return tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    return tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode


def test_go_sev_guest_vector_matches_manifest() -> None:
    data = (VECTORS / "attestation.bin").read_bytes()
    r = parse_snp_report(data)
    assert r.version == 2
    assert r.guest_svn == 0
    assert r.report_data == bytes.fromhex("0102030405") + bytes(59)
    assert r.measurement == bytes.fromhex(
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
        "6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert r.host_data == bytes(32)
    assert r.family_id == bytes(16)
    assert r.image_id == bytes(16)
    assert r.report_id == bytes.fromhex(
        "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a"
    )
    assert r.report_id_ma == b"\xff" * 32
    assert r.chip_id == bytes.fromhex(
        "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
        "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d"
    )
    for tcb in (r.reported_tcb, r.launch_tcb, r.current_tcb, r.committed_tcb):
        assert tcb.raw == 4901323769462652930 == 0x4405000000000002
        assert tcb_parts(tcb) == (2, 0, 5, 68)
    assert r.policy.raw == 0xB0000
    assert r.policy.debug
    assert r.policy.smt
    assert not r.policy.migrate_ma
    assert not r.policy.single_socket
    assert (r.policy.abi_major, r.policy.abi_minor) == (0, 0)
    assert r.vmpl == 0
    assert r.platform_info.raw == 1
    assert r.platform_info.smt_enabled
    assert str(r.current_version) == str(r.committed_version) == "1.49.3"
    assert r.id_key_digest == bytes(48)
    assert r.author_key_digest == bytes(48)
    assert not r.author_key_en
    assert not r.mask_chip_key
    assert r.signing_key is SigningKey.VCEK
    assert r.signature_algo == 1
    assert r.cpuid_fam_id is r.cpuid_mod_id is r.cpuid_step is None
    assert r.launch_mit_vector is r.current_mit_vector is None
    assert r.product is None
    assert r.cpuid_product is None
    assert r.raw == data
    assert r.signed_bytes == data[:0x2A0]
    assert r.signature_r == data[0x2A0:0x2E8]
    assert r.signature_s == data[0x2E8:0x330]
    assert r.signature_rs[0] == int.from_bytes(data[0x2A0:0x2E8], "little")


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_every_field_at_its_spec_offset(version: int) -> None:
    r = parse_snp_report(bytes(build_report(version=version)))
    assert r.version == version
    assert r.guest_svn == 0x0A0B0C0D
    for name, value in FIELDS.items():
        assert getattr(r, name) == value, name
    assert r.policy.raw == POLICY
    assert (r.policy.abi_major, r.policy.abi_minor) == (0x0A, 0x0B)
    assert r.policy.smt
    assert r.policy.migrate_ma
    assert r.policy.debug
    assert r.policy.single_socket
    assert r.policy.cxl_allowed
    assert r.policy.mem_aes_256_xts
    assert r.policy.rapl_dis
    assert r.policy.ciphertext_hiding
    assert r.policy.page_swap_disable
    assert r.vmpl == 1
    assert r.signature_algo == 1
    info = r.platform_info
    assert info.raw == 0x25
    assert info.smt_enabled
    assert info.ecc_enabled
    assert info.alias_check_complete
    assert not info.tsme_enabled
    assert not info.rapl_disabled
    assert not info.ciphertext_hiding_enabled
    assert (r.current_build, r.current_minor, r.current_major) == (7, 55, 1)
    assert (r.committed_build, r.committed_minor, r.committed_major) == (6, 54, 1)
    assert str(r.current_version) == "1.55.7"
    assert str(r.committed_version) == "1.54.6"
    assert r.signature_r == bytes(range(1, 73))
    assert r.signature_s == bytes(range(101, 173))
    for tcb, raw in [
        (r.current_tcb, CURRENT_TCB),
        (r.reported_tcb, REPORTED_TCB),
        (r.committed_tcb, COMMITTED_TCB),
        (r.launch_tcb, LAUNCH_TCB),
    ]:
        assert tcb.raw == int.from_bytes(raw, "little")
        assert tcb_parts(tcb) == milan_tcb(raw)  # version 2 and the Genoa CPUID
    if version >= 3:
        assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x11, 0x01)
        assert r.cpuid_product is r.product is SnpProduct.GENOA
    else:
        assert r.cpuid_fam_id is None
        assert r.product is None
    if version >= 5:
        assert r.launch_mit_vector == 0x0102030405060708
        assert r.current_mit_vector == 0x1112131415161718
    else:
        assert r.launch_mit_vector is r.current_mit_vector is None


def test_turin_cpuid_selects_the_turin_tcb_layout() -> None:
    r = parse_snp_report(bytes(build_report(version=5, cpuid=(0x1A, 0x02, 0x00))))
    assert r.product is SnpProduct.TURIN
    assert tcb_parts(r.reported_tcb) == turin_tcb(REPORTED_TCB)
    assert r.reported_tcb.to_dict() == {
        "raw": int.from_bytes(REPORTED_TCB, "little"),
        "fmc": 0x21,
        "bootloader": 0x22,
        "tee": 0x23,
        "snp": 0x24,
        "microcode": 0x28,
    }


def test_product_argument_overrides_the_cpuid_layout() -> None:
    data = bytes(build_report(version=2))
    assert tcb_parts(parse_snp_report(data).launch_tcb) == milan_tcb(LAUNCH_TCB)
    turin = parse_snp_report(data, product=SnpProduct.TURIN)
    assert turin.product is SnpProduct.TURIN
    assert tcb_parts(turin.launch_tcb) == turin_tcb(LAUNCH_TCB)


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, SnpProduct.MILAN),
        (0x19, 0x00, SnpProduct.MILAN),
        (0x19, 0x11, SnpProduct.GENOA),
        (0x19, 0xA0, SnpProduct.GENOA),
        (0x1A, 0x02, SnpProduct.TURIN),
        (0x1A, 0x11, SnpProduct.TURIN),
        (0x19, 0x21, None),
        (0x17, 0x31, None),
        (0x00, 0x00, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: SnpProduct | None) -> None:
    assert product_from_cpuid(family, model) is product


@pytest.mark.parametrize(
    ("version", "offset"),
    [
        (2, 0x04C),
        (2, 0x04F),
        (2, 0x188),
        (2, 0x18A),
        (3, 0x18B),
        (5, 0x19F),
        (3, 0x1EB),
        (3, 0x1EF),
        (2, 0x1F8),
        (4, 0x207),
        (5, 0x208),
        (5, 0x29F),
        (5, 0x330),
        (2, 0x49F),
    ],
)
def test_reserved_bytes_must_be_zero(version: int, offset: int) -> None:
    data = build_report(version=version)
    data[offset] ^= 0x40
    with pytest.raises(EvidenceFormatError, match="reserved bytes"):
        parse_snp_report(bytes(data))


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unknown_versions_are_unsupported(version: int) -> None:
    data = build_report()
    struct.pack_into("<I", data, 0, version)
    with pytest.raises(UnsupportedEvidenceError, match="VERSION"):
        parse_snp_report(bytes(data))


@pytest.mark.parametrize("algo", [0, 2, 0x100])
def test_only_ecdsa_p384_signatures(algo: int) -> None:
    data = build_report()
    struct.pack_into("<I", data, 0x34, algo)
    with pytest.raises(UnsupportedEvidenceError, match="SIGNATURE_ALGO"):
        parse_snp_report(bytes(data))


@pytest.mark.parametrize(
    ("policy", "match"),
    [(POLICY & ~(1 << 17), "bit 17"), (POLICY | 1 << 26, "26..63"), (1 << 63 | 1 << 17, "26..63")],
)
def test_policy_reserved_bits(policy: int, match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=f"POLICY.*{match}"):
        parse_snp_report(bytes(build_report(policy=policy)))


def test_key_info_fields() -> None:
    r = parse_snp_report(bytes(build_report(signing_key=1, mask_chip_key=True, author_key_en=True)))
    assert r.signing_key is SigningKey.VLEK
    assert r.mask_chip_key
    assert r.author_key_en
    assert parse_snp_report(bytes(build_report(signing_key=7))).signing_key is SigningKey.NONE


@pytest.mark.parametrize("value", [2, 3, 6])
def test_reserved_signing_key_values(value: int) -> None:
    with pytest.raises(EvidenceFormatError, match="SIGNING_KEY"):
        parse_snp_report(bytes(build_report(signing_key=value)))


def test_key_info_reserved_bits() -> None:
    data = build_report()
    data[0x49] = 1
    with pytest.raises(EvidenceFormatError, match="0x048"):
        parse_snp_report(bytes(data))


def test_short_input_and_trailing_bytes() -> None:
    data = bytes(build_report())
    for size in (0, 1, 0x2A0, REPORT_SIZE - 1):
        with pytest.raises(EvidenceFormatError, match="at least 1184"):
            parse_snp_report(data[:size])
    longer = parse_snp_report(data + b"\x01" * 10)
    assert longer.raw == data
    assert longer == parse_snp_report(data)


def cert_table(entries: list[tuple[uuid.UUID, bytes]], *, terminator: bool = True) -> bytes:
    header = 24 * (len(entries) + int(terminator))
    out = bytearray()
    body = bytearray()
    for guid, blob in entries:
        out += guid.bytes + struct.pack("<II", header + len(body), len(blob))
        body += blob
    if terminator:
        out += bytes(24)
    return bytes(out + body)


def test_cert_table_round_trip() -> None:
    other = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6")
    blobs = [(VCEK_GUID, b"vcek"), (ASK_GUID, b"ask!!"), (ARK_GUID, b"ark"), (other, b"x")]
    data = cert_table(blobs)
    assert data[:4] == bytes.fromhex("63da758d")  # GUIDs in RFC 4122 byte order
    table = parse_cert_table(data)
    assert [(e.guid, e.data) for e in table.entries] == blobs
    assert [e.role for e in table.entries] == ["vcek", "ask", "ark", None]
    assert table.get(VCEK_GUID) == b"vcek"
    assert table.get(VLEK_GUID) is None
    assert parse_cert_table(b"") == CertTable(()) == parse_cert_table(bytes(24))


def test_zero_guid_with_a_payload_is_an_entry_not_the_end() -> None:
    data = bytearray(cert_table([(uuid.UUID(int=0), b"blob"), (VLEK_GUID, b"vlek")]))
    table = parse_cert_table(bytes(data))
    assert [e.role for e in table.entries] == [None, "vlek"]


CERT_TABLE_ERRORS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "no terminator": (lambda d: d[:24], "truncated"),
    "cut terminator": (lambda d: d[:30], "truncated"),
    "offset into header": (lambda d: d[:16] + struct.pack("<I", 10) + d[20:], "into the"),
    "cut certificate": (lambda d: d[:-1], "ends past the"),
    "huge length": (lambda d: d[:20] + struct.pack("<I", 0xFFFFFFFF) + d[24:], "ends past the"),
}


@pytest.mark.parametrize("case", CERT_TABLE_ERRORS)
def test_cert_table_errors(case: str) -> None:
    mutate, match = CERT_TABLE_ERRORS[case]
    with pytest.raises(EvidenceFormatError, match=match):
        parse_cert_table(mutate(cert_table([(VCEK_GUID, b"vcek-cert")])))


def test_cert_table_rejects_a_repeated_known_guid() -> None:
    with pytest.raises(EvidenceFormatError, match="more than once"):
        parse_cert_table(cert_table([(VCEK_GUID, b"a"), (VCEK_GUID, b"b")]))


def test_extended_report() -> None:
    report = bytes(build_report())
    table = cert_table([(VCEK_GUID, b"vcek")])
    parsed, certs = parse_extended_report(report + table)
    assert parsed.raw == report
    assert certs.get(VCEK_GUID) == b"vcek"
    assert parse_extended_report(report)[1] == CertTable(())


# Fuzzing: only AttestationError subclasses may escape (2,400 examples in total).
VALID = bytes(build_report(version=5))


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_fuzz_report_random_bytes(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_snp_report(data)


@settings(max_examples=600, deadline=None)
@given(
    st.integers(0, 2 * REPORT_SIZE),
    st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255)), max_size=8),
    st.binary(max_size=64),
)
def test_fuzz_report_mutations(size: int, flips: list[tuple[int, int]], tail: bytes) -> None:
    data = bytearray(VALID)
    for offset, mask in flips:
        data[offset] ^= mask
    try:
        r = parse_snp_report(bytes(data[:size]) + tail)
    except AttestationError:
        return
    assert len(r.raw) == REPORT_SIZE


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_cert_table_random_bytes(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_cert_table(data)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID, uuid.UUID(int=0)]),
            st.integers(0, 300),
            st.integers(0, 300),
        ),
        max_size=5,
    ),
    st.booleans(),
    st.binary(max_size=200),
)
def test_fuzz_cert_table_structured(
    entries: list[tuple[uuid.UUID, int, int]], terminator: bool, body: bytes
) -> None:
    data = b"".join(g.bytes + struct.pack("<II", o, n) for g, o, n in entries)
    data += bytes(24) * terminator + body
    try:
        table = parse_cert_table(data)
    except AttestationError:
        return
    assert all(len(e.data) <= len(data) for e in table.entries)
