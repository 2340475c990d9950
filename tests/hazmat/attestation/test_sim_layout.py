from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml.errors import AttestationError, EvidenceFormatError, UnsupportedEvidenceError
from trustedml.hazmat.attestation import sim
from trustedml.hazmat.attestation.sim import SimEvidence, parse_sim_evidence

MEASUREMENT = bytes(range(32))
REPORT_DATA = b"\x42" * 64
PUBLIC_KEY = b"\x07" * 32
SIGNATURE = b"\x5a" * 64


def build(
    *,
    measurement: bytes = MEASUREMENT,
    debug: bool = False,
    signature: bytes = SIGNATURE,
) -> bytes:
    body = sim.signed_bytes(
        measurement=measurement, report_data=REPORT_DATA, public_key=PUBLIC_KEY, debug=debug
    )
    return body + signature


def test_layout_matches_the_documented_offsets() -> None:
    blob = build()
    assert blob[:8] == b"TMLSIM01"
    assert struct.unpack(">HHH", blob[8:14]) == (1, 0, 32)
    assert blob[14:46] == MEASUREMENT
    assert blob[46:110] == REPORT_DATA
    assert blob[110:142] == PUBLIC_KEY
    assert blob[142:] == SIGNATURE
    assert len(blob) == sim.evidence_size(32) == 14 + 32 + 160


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("mlen", [1, 32, 48, 64])
def test_round_trip(debug: bool, mlen: int) -> None:
    measurement = bytes([mlen]) * mlen
    blob = build(measurement=measurement, debug=debug)
    parsed = parse_sim_evidence(blob)
    assert parsed == SimEvidence(
        debug=debug,
        measurement=measurement,
        report_data=REPORT_DATA,
        public_key=PUBLIC_KEY,
        signature=SIGNATURE,
    )
    assert parsed.to_bytes() == blob
    assert parsed.signed_bytes == blob[: -sim.SIGNATURE_SIZE]


def test_debug_flag_is_bit_zero() -> None:
    assert build(debug=True)[10:12] == b"\x00\x01"


def test_bad_magic() -> None:
    blob = build()
    with pytest.raises(EvidenceFormatError, match="magic: expected b'TMLSIM01'"):
        parse_sim_evidence(b"TMLSIM02" + blob[8:])
    with pytest.raises(EvidenceFormatError, match="magic"):
        parse_sim_evidence(b"")


def test_header_truncated() -> None:
    with pytest.raises(EvidenceFormatError, match="header truncated: expected 14 bytes, got 10"):
        parse_sim_evidence(build()[:10])


@pytest.mark.parametrize("version", [0, 2, 0x0100, 0xFFFF])
def test_unknown_version_is_unsupported(version: int) -> None:
    blob = bytearray(build())
    blob[8:10] = version.to_bytes(2, "big")
    with pytest.raises(UnsupportedEvidenceError, match=f"version: expected 1, got {version}"):
        parse_sim_evidence(bytes(blob))


def test_unknown_flags() -> None:
    blob = bytearray(build())
    blob[10:12] = b"\x80\x01"
    with pytest.raises(EvidenceFormatError, match="flags: unknown bits 0x8000"):
        parse_sim_evidence(bytes(blob))


@pytest.mark.parametrize("mlen", [0, 65, 0xFFFF])
def test_measurement_length_out_of_range(mlen: int) -> None:
    blob = bytearray(build())
    blob[12:14] = mlen.to_bytes(2, "big")
    with pytest.raises(
        EvidenceFormatError, match=f"measurement length: expected 1..64, got {mlen}"
    ):
        parse_sim_evidence(bytes(blob))


@pytest.mark.parametrize("delta", [-1, 1, -100])
def test_length_must_be_exact(delta: int) -> None:
    blob = build()
    bad = blob[:delta] if delta < 0 else blob + b"\x00" * delta
    with pytest.raises(EvidenceFormatError, match="length: expected 206 bytes for a 32-byte"):
        parse_sim_evidence(bad)


def test_construction_validates_sizes() -> None:
    with pytest.raises(EvidenceFormatError, match="report_data: expected 64 bytes, got 63"):
        sim.signed_bytes(
            measurement=MEASUREMENT, report_data=b"\x00" * 63, public_key=PUBLIC_KEY, debug=False
        )
    with pytest.raises(EvidenceFormatError, match="signature: expected 64 bytes, got 1"):
        SimEvidence(False, MEASUREMENT, REPORT_DATA, PUBLIC_KEY, b"\x00")
    with pytest.raises(UnsupportedEvidenceError):
        SimEvidence(False, MEASUREMENT, REPORT_DATA, PUBLIC_KEY, SIGNATURE, version=2)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_raise_only_attestation_errors(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_sim_evidence(data)


@settings(max_examples=1000, deadline=None)
@given(
    header=st.tuples(
        st.integers(0, 3), st.integers(0, 0xFFFF), st.integers(0, 80) | st.integers(0, 0xFFFF)
    ),
    body=st.binary(max_size=300),
)
def test_fuzz_sim_shaped_input(header: tuple[int, int, int], body: bytes) -> None:
    data = b"TMLSIM01" + struct.pack(">HHH", *header) + body
    try:
        parsed = parse_sim_evidence(data)
    except AttestationError:
        return
    # Anything that parses must re-encode to exactly the input.
    assert parsed.to_bytes() == data
