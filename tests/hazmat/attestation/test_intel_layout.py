"""Intel DCAP quote layouts (SGX v3, TDX v4/v5), the DER reader and the PCK SGX
extension, on the real dcap-qvl vectors plus synthetic edge cases and fuzzing."""

from __future__ import annotations

import contextlib
import functools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml.errors import AttestationError, EvidenceFormatError, UnsupportedEvidenceError
from trustedml.hazmat.attestation import der as _der
from trustedml.hazmat.attestation.intel import (
    SGX_EXTENSION_OID,
    Quote,
    SgxReportBody,
    TdReport10,
    TdReport15,
    parse_pck_extension,
    parse_quote,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "attestation" / "vectors" / "dcap-qvl"
KAT: dict[str, Any] = json.loads(
    (ROOT / "tests" / "attestation" / "vectors" / "intel_dcap.json").read_text()
)
NAMES = sorted(name for name in KAT if not name.startswith("_"))


@functools.cache
def load(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def sig_start(quote: Quote) -> int:
    return len(quote.signed_bytes) + 4


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


# --- real vectors -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_manifest_fields(name: str) -> None:
    exp = KAT[name]["quote"]
    data = load(name)
    quote = parse_quote(data)
    assert len(data) == exp["length"]
    assert quote.size == exp["size"]
    assert len(quote.signed_bytes) == exp["signed_size"]
    assert quote.signed_bytes == data[: exp["signed_size"]]
    header = quote.header
    assert header.version == exp["version"]
    assert header.att_key_type == exp["att_key_type"]
    assert header.tee_type == exp["tee_type"]
    assert header.qe_vendor_id.hex() == exp["qe_vendor_id"]
    if "user_data" in exp:
        assert header.user_data.hex() == exp["user_data"]
        assert (header.qe_svn, header.pce_svn) == (exp["qe_svn"], exp["pce_svn"])
    assert quote.body_type == exp["body_type"]
    sig = quote.signature_data
    assert sig.certification_data.cert_type == exp["cert_type"]
    assert sig.pck_certification_data.cert_type == exp["pck_cert_type"]
    certs = x509.load_pem_x509_certificates(sig.pck_certification_data.data)
    assert len(certs) == 3
    assert certs[0].issuer.rfc4514_string().endswith(f"CN={exp['pck_ca']}")
    # Whatever follows the quote (70 zero bytes in the TDX v4 sample) is ignored.
    assert data[quote.size :] == bytes(len(data) - quote.size)

    body = quote.body
    for field, value in KAT[name]["body"].items():
        got = getattr(body, field)
        if isinstance(value, list):
            assert [item.hex() for item in got] == value, field
        elif isinstance(value, str):
            assert got.hex() == value, field
        else:
            assert got == value, field


def test_body_types_and_offsets() -> None:
    sgx = parse_quote(load("sgx_quote"))
    assert type(sgx.body) is SgxReportBody
    assert sgx.body.raw == load("sgx_quote")[48:432]
    tdx = parse_quote(load("tdx_quote"))
    assert type(tdx.body) is TdReport10
    assert tdx.body.raw == load("tdx_quote")[48:632]
    assert tdx.body.tdx_module_version == 1
    v5 = parse_quote(load("tdx_quote_outdated"))
    assert type(v5.body) is TdReport15
    assert isinstance(v5.body, TdReport15)
    assert v5.body.raw == load("tdx_quote_outdated")[54:702]


@pytest.mark.parametrize("name", ["tdx_quote", "tdx_quote_outdated"])
def test_type6_wraps_type5(name: str) -> None:
    sig = parse_quote(load(name)).signature_data
    outer = sig.certification_data
    assert outer.cert_type == 6
    assert outer.qe_report_data is not None
    assert outer.qe_report_data.qe_report is sig.qe_report
    assert outer.qe_report_data.certification_data is sig.pck_certification_data
    assert len(sig.qe_auth_data) == 32
    assert sig.pck_certification_data.data.endswith(b"-----END CERTIFICATE-----\n\x00")


@pytest.mark.parametrize("name", NAMES)
def test_pck_extension_of_vectors(name: str) -> None:
    quote = parse_quote(load(name))
    leaf = x509.load_pem_x509_certificates(quote.signature_data.pck_certification_data.data)[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    pck = parse_pck_extension(ext.value.value)
    assert pck.fmspc.hex() == KAT[name]["pck"]["fmspc"]
    assert pck.pce_id.hex() == KAT[name]["pck"]["pce_id"]
    assert len(pck.ppid) == 16
    assert len(pck.tcb_components) == 16
    platform_ca = "Platform" in KAT[name]["quote"]["pck_ca"]
    # Processor CA certificates carry no platform instance or configuration.
    assert (pck.platform_instance_id is not None) == platform_ca
    assert (pck.dynamic_platform is not None) == platform_ca
    assert pck.sgx_type_name == ("Scalable" if platform_ca else "Standard")


def test_sgx_pck_component_255_is_decoded() -> None:
    quote = parse_quote(load("sgx_quote"))
    leaf = x509.load_pem_x509_certificates(quote.signature_data.pck_certification_data.data)[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    pck = parse_pck_extension(ext.value.value)
    assert pck.tcb_components[:6] == (11, 11, 2, 2, 255, 1)
    assert pck.pce_svn == 13
    assert pck.cpusvn == bytes(pck.tcb_components)


# --- synthetic layouts --------------------------------------------------------------


def v4_signature_data(quote: Quote, cert_type: int = 6, inner_type: int = 5) -> bytes:
    sig = quote.signature_data
    inner = sig.pck_certification_data.data
    qe_cert = (
        sig.qe_report.raw
        + sig.qe_report_signature
        + struct.pack("<H", len(sig.qe_auth_data))
        + sig.qe_auth_data
        + struct.pack("<HI", inner_type, len(inner))
        + inner
    )
    body = sig.signature + sig.attestation_key + struct.pack("<HI", cert_type, len(qe_cert))
    return body + qe_cert


def test_v5_body_type_2() -> None:
    v4 = parse_quote(load("tdx_quote"))
    header = patch(v4.header.raw, 0, struct.pack("<H", 5))
    sig = v4_signature_data(v4)
    data = header + struct.pack("<HI", 2, 584) + v4.body.raw + struct.pack("<I", len(sig)) + sig
    quote = parse_quote(data)
    assert quote.body_type == 2
    assert type(quote.body) is TdReport10
    assert quote.body == v4.body
    assert len(quote.signed_bytes) == 48 + 6 + 584
    assert quote.size == len(data)


def test_v4_with_sgx_body() -> None:
    # Intel's QVL parses a v4 header with TEE type SGX as an SGX report body.
    v3 = parse_quote(load("sgx_quote"))
    header = patch(v3.header.raw, 0, struct.pack("<H", 4))
    sig = v4_signature_data(v3)
    quote = parse_quote(header + v3.body.raw + struct.pack("<I", len(sig)) + sig)
    assert quote.body == v3.body
    assert quote.signature_data.qe_report == v3.signature_data.qe_report
    assert quote.signature_data.pck_certification_data == v3.signature_data.certification_data


def test_trailing_bytes_are_ignored() -> None:
    for name in NAMES:
        quote = parse_quote(load(name))
        longer = parse_quote(load(name) + b"\xa5" * 333)
        assert longer.size == quote.size
        assert longer.signature_data == quote.signature_data


def test_not_bytes() -> None:
    with pytest.raises(EvidenceFormatError, match="bytes"):
        parse_quote("quote")  # type: ignore[arg-type]


def test_truncated_header() -> None:
    with pytest.raises(EvidenceFormatError, match="header truncated"):
        parse_quote(b"\x03\x00\x02\x00")


def _header_mutation(name: str, offset: int, fmt: str, value: int) -> bytes:
    return patch(load(name), offset, struct.pack(fmt, value))


@pytest.mark.parametrize(
    ("name", "offset", "fmt", "value", "match"),
    [
        ("sgx_quote", 0, "<H", 2, "version 2"),
        ("tdx_quote", 0, "<H", 6, "version 6"),
        ("sgx_quote", 2, "<H", 3, "attestation key type 3"),
        ("tdx_quote", 4, "<I", 0x82, "TEE type 0x82"),
        ("sgx_quote", 4, "<I", 0x81, "version 3 is SGX only"),
        ("tdx_quote_outdated", 48, "<H", 4, "body type 4"),
    ],
)
def test_unsupported(name: str, offset: int, fmt: str, value: int, match: str) -> None:
    with pytest.raises(UnsupportedEvidenceError, match=match):
        parse_quote(_header_mutation(name, offset, fmt, value))


def test_v5_body_size_and_type_must_agree() -> None:
    with pytest.raises(EvidenceFormatError, match="body size 600") as exc:
        parse_quote(_header_mutation("tdx_quote_outdated", 50, "<I", 600))
    assert type(exc.value) is EvidenceFormatError
    with pytest.raises(EvidenceFormatError, match="does not match TEE type") as exc:
        parse_quote(
            _header_mutation("tdx_quote_outdated", 48, "<H", 1)[:50]
            + struct.pack("<I", 384)
            + load("tdx_quote_outdated")[54:]
        )
    assert type(exc.value) is EvidenceFormatError


@pytest.mark.parametrize(
    ("name", "where", "value", "match"),
    [
        ("tdx_quote", "outer", 5, "expected 6"),
        ("tdx_quote", "outer", 7, "type 7"),
        ("tdx_quote", "inner", 6, "type 6 is not allowed"),
        ("tdx_quote", "inner", 0, "type 0"),
        ("sgx_quote", "outer", 6, "type 6 is not allowed"),
        ("sgx_quote", "outer", 9, "type 9"),
    ],
)
def test_certification_data_types(name: str, where: str, value: int, match: str) -> None:
    data = load(name)
    quote = parse_quote(data)
    start = sig_start(quote) + 128
    if quote.version == 3:
        start += 384 + 64 + 2 + len(quote.signature_data.qe_auth_data)
    if where == "inner":
        start += 6 + 384 + 64 + 2 + len(quote.signature_data.qe_auth_data)
    with pytest.raises(UnsupportedEvidenceError, match=match):
        parse_quote(patch(data, start, struct.pack("<H", value)))


@pytest.mark.parametrize(
    ("name", "field", "delta", "match"),
    [
        ("sgx_quote", "signature", 1, "signature data"),
        ("sgx_quote", "auth", 5000, "QE auth data"),
        ("sgx_quote", "cert", 1, "certification data"),
        ("tdx_quote_outdated", "signature", 1, "signature data"),
        ("tdx_quote", "cert", 71, "certification data"),
        ("tdx_quote", "auth", 5000, "QE auth data"),
        ("tdx_quote", "inner", 1, "nested certification data"),
    ],
)
def test_declared_sizes_must_fit(name: str, field: str, delta: int, match: str) -> None:
    data = load(name)
    quote = parse_quote(data)
    sig = quote.signature_data
    auth = len(sig.qe_auth_data)
    start = sig_start(quote)
    if field == "signature":
        offset, fmt, value = start - 4, "<I", quote.size - start + len(data) - quote.size
    elif quote.version == 3:
        offset = {"auth": start + 128 + 384 + 64, "cert": start + 128 + 384 + 64 + 2 + auth + 2}[
            field
        ]
        fmt = "<H" if field == "auth" else "<I"
        value = auth if field == "auth" else len(sig.certification_data.data)
    else:
        qe = start + 128 + 6
        offset = {
            "cert": start + 128 + 2,
            "auth": qe + 384 + 64,
            "inner": qe + 384 + 64 + 2 + auth + 2,
        }[field]
        fmt = "<H" if field == "auth" else "<I"
        value = {
            "cert": len(sig.certification_data.data),
            "auth": auth,
            "inner": len(sig.pck_certification_data.data),
        }[field]
    with pytest.raises(EvidenceFormatError, match=match) as exc:
        parse_quote(patch(data, offset, struct.pack(fmt, value + delta)))
    assert type(exc.value) is EvidenceFormatError


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_fails(name: str) -> None:
    data = load(name)
    size = parse_quote(data).size
    for cut in (*range(0, 700, 7), size - 1, size - 100, size - 3000):
        with pytest.raises(EvidenceFormatError):
            parse_quote(data[:cut])


# --- fuzzing ------------------------------------------------------------------------

# The parser must only ever raise AttestationError subclasses, whatever the input.


def _parse_or_reject(data: bytes) -> Quote | None:
    try:
        return parse_quote(data)
    except AttestationError:
        return None


def _seeds() -> list[bytes]:
    return [load(name) for name in NAMES]


def _structural_offsets(data: bytes) -> list[int]:
    quote = parse_quote(data)
    start = sig_start(quote)
    offsets = [*range(0, 12), *range(48, 54), start - 4, start - 1]
    offsets += [start + 128 + i for i in range(8)]
    offsets += [start + 128 + 6 + 384 + 64 + i for i in range(10)]
    offsets += [start + 128 + 384 + 64 + i for i in range(10)]
    return [o for o in offsets if o < len(data)]


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 2), st.integers(0, 5006))
def test_fuzz_truncated(index: int, cut: int) -> None:
    data = _seeds()[index]
    quote = _parse_or_reject(data[:cut])
    if cut < parse_quote(data).size:
        assert quote is None
    else:
        assert quote is not None


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2), st.binary(min_size=1, max_size=512))
def test_fuzz_extended(index: int, suffix: bytes) -> None:
    data = _seeds()[index]
    quote = _parse_or_reject(data + suffix)
    assert quote is not None
    assert quote.size == parse_quote(data).size


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random(data: bytes) -> None:
    _parse_or_reject(data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([3, 4, 5]),
    st.sampled_from([0, 0x81]),
    st.sampled_from([b"", struct.pack("<HI", 2, 584), struct.pack("<HI", 3, 648)]),
    st.binary(max_size=1500),
)
def test_fuzz_valid_header_random_rest(
    version: int, tee: int, descriptor: bytes, rest: bytes
) -> None:
    header = struct.pack("<HHIHH16s20s", version, 2, tee, 0, 0, bytes(16), bytes(20))
    _parse_or_reject(header + descriptor + rest)


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 2), st.data())
def test_fuzz_mutated_fields(index: int, draw: st.DataObject) -> None:
    data = _seeds()[index]
    offset = draw.draw(st.sampled_from(_structural_offsets(data)) | st.integers(0, len(data) - 1))
    value = draw.draw(st.integers(0, 255))
    _parse_or_reject(patch(data, offset, bytes([value])))


# --- DER reader -----------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def integer(value: int, tag: int = 0x02) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)
    return tlv(tag, value.to_bytes(size, "big", signed=True))


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def entry(suffix: str, value: bytes) -> bytes:
    return seq(oid(f"{SGX_EXTENSION_OID}.{suffix}"), value)


def pck_extension(**overrides: bytes | None) -> bytes:
    tcb = [entry(f"2.{i}", integer(i * 3)) for i in range(1, 17)]
    tcb += [entry("2.17", integer(300)), entry("2.18", tlv(0x04, bytes(range(16))))]
    parts: dict[str, bytes | None] = {
        "ppid": entry("1", tlv(0x04, b"P" * 16)),
        "tcb": entry("2", seq(*tcb)),
        "pce_id": entry("3", tlv(0x04, b"\x00\x01")),
        "fmspc": entry("4", tlv(0x04, bytes.fromhex("00906ea10000"))),
        "sgx_type": entry("5", integer(1, tag=0x0A)),
        "instance": entry("6", tlv(0x04, b"I" * 16)),
        "config": entry(
            "7",
            seq(
                entry("7.1", tlv(0x01, b"\xff")),
                entry("7.2", tlv(0x01, b"\x00")),
            ),
        ),
    }
    parts.update(overrides)
    return seq(*(part for part in parts.values() if part is not None))


def test_der_lengths() -> None:
    assert _der.read_tlv(b"\x04\x02ab", 0, "x") == (_der.Tlv(4, b"ab"), 4)
    long = tlv(0x04, b"z" * 200)
    assert long[1:3] == b"\x81\xc8"
    assert _der.read_single(long, 0x04, "x") == b"z" * 200
    for bad, match in [
        (b"", "no identifier"),
        (b"\x04", "no length"),
        (b"\x04\x80", "indefinite"),
        (b"\x04\x81\x05hello", "not DER"),
        (b"\x04\x82\x00\x80" + b"a" * 128, "leading zero"),
        (b"\x04\x85\x01\x00\x00\x00\x00", "too large"),
        (b"\x04\x82\x01", "truncated length"),
        (b"\x04\x05abc", "overruns"),
        (b"\x1f\x01\x00", "high-tag"),
    ]:
        with pytest.raises(EvidenceFormatError, match=match):
            _der.read_tlv(bad, 0, "x")
    with pytest.raises(EvidenceFormatError, match="trailing"):
        _der.read_single(b"\x04\x01a\x00", 0x04, "x")
    with pytest.raises(EvidenceFormatError, match="expected OCTET STRING, got INTEGER"):
        _der.read_single(b"\x02\x01\x01", 0x04, "x")


def test_der_values() -> None:
    assert _der.decode_integer(b"\xff", "x") == -1
    assert _der.decode_integer(b"\x00\x80", "x") == 128
    assert _der.decode_integer(b"\x01\x00", "x") == 256
    for bad in (b"", b"\x00\x7f", b"\xff\x80"):
        with pytest.raises(EvidenceFormatError):
            _der.decode_integer(bad, "x")
    assert _der.decode_boolean(b"\xff", "x") is True
    assert _der.decode_boolean(b"\x00", "x") is False
    with pytest.raises(EvidenceFormatError, match="BOOLEAN"):
        _der.decode_boolean(b"\x01", "x")
    assert _der.decode_oid(oid(SGX_EXTENSION_OID)[2:], "x") == SGX_EXTENSION_OID
    assert _der.decode_oid(oid("2.999.3")[2:], "x") == "2.999.3"
    for bad, match in [(b"", "empty"), (b"\x2a\x80\x01", "leading 0x80"), (b"\x2a\x86", "ends")]:
        with pytest.raises(EvidenceFormatError, match=match):
            _der.decode_oid(bad, "x")


def test_pck_extension_synthetic() -> None:
    pck = parse_pck_extension(pck_extension())
    assert pck.tcb_components == tuple(i * 3 for i in range(1, 17))
    assert pck.pce_svn == 300
    assert pck.cpusvn == bytes(range(16))
    assert pck.fmspc.hex() == "00906ea10000"
    assert pck.pce_id == b"\x00\x01"
    assert pck.sgx_type_name == "Scalable"
    assert pck.platform_instance_id == b"I" * 16
    assert (pck.dynamic_platform, pck.cached_keys, pck.smt_enabled) == (True, False, None)
    # Unknown entries are Intel's to add; they are skipped.
    assert parse_pck_extension(pck_extension(extra=entry("99", tlv(0x05, b"")))) == pck


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"fmspc": None}, r"FMSPC \(1.2.840.113741.1.13.1.4\) is missing"),
        ({"tcb": None}, "TCB"),
        ({"fmspc": entry("4", tlv(0x04, b"12345"))}, "PCK FMSPC: expected 6 bytes"),
        ({"ppid": entry("1", tlv(0x02, b"\x01"))}, "expected OCTET STRING"),
        ({"dup": entry("3", tlv(0x04, b"\x00\x01"))}, "duplicate"),
        (
            {"tcb": entry("2", seq(*[entry(f"2.{i}", integer(256)) for i in range(1, 19)]))},
            "component 1 SVN: 256",
        ),
        ({"sgx_type": entry("5", integer(-1, tag=0x0A))}, "SGX type: -1"),
        ({"config": entry("7", seq(entry("7.1", tlv(0x01, b"\x01"))))}, "BOOLEAN"),
        ({"ppid": seq(oid(f"{SGX_EXTENSION_OID}.1"))}, "1 elements"),
    ],
)
def test_pck_extension_errors(overrides: dict[str, bytes | None], match: str) -> None:
    with pytest.raises(EvidenceFormatError, match=match):
        parse_pck_extension(pck_extension(**overrides))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255))
def test_fuzz_pck_extension(position: int, value: int) -> None:
    der = pck_extension()
    mutated = patch(der, position % len(der), bytes([value]))
    with contextlib.suppress(EvidenceFormatError):
        parse_pck_extension(mutated)
