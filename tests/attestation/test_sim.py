from __future__ import annotations

import contextlib
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml.attestation._model import EvidenceType, TcbStatus, Verifier
from trustedml.attestation._sim import SIM_WARNING, SimKey, SimProvider, SimVerifier
from trustedml.errors import (
    AttestationError,
    ConfigError,
    EvidenceFormatError,
    EvidenceSignatureError,
    UnsupportedEvidenceError,
)
from trustedml.hazmat.attestation import sim as layout

AT = datetime(2025, 6, 1, tzinfo=UTC)
MEASUREMENT = bytes.fromhex("ab12" * 16)
KEY = SimKey.generate()
OTHER_KEY = SimKey.generate()


def evidence(report_data: bytes = b"nonce", *, debug: bool = False) -> bytes:
    return SimProvider(KEY, measurement=MEASUREMENT, debug=debug).get_evidence(report_data)


def test_round_trip_verifies_with_the_trusted_key() -> None:
    verifier = SimVerifier([KEY.public_key_pem()])
    assert isinstance(verifier, Verifier)
    verified = verifier.verify(evidence(b"nonce"), collateral=None, at=AT)
    claims = verified.claims
    assert claims.evidence_type is EvidenceType.SIM
    assert claims.simulated is True
    assert claims.measurement == MEASUREMENT
    assert claims.report_data == b"nonce" + b"\x00" * 59
    assert claims.debug is False
    assert claims.extra["warning"] == SIM_WARNING
    assert claims.extra["signer_sha256"] == KEY.fingerprint
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.collateral_issued is None
    assert SIM_WARNING in verified.checks


def test_debug_is_carried_and_signed() -> None:
    verified = SimVerifier([KEY.public_key_pem()]).verify(evidence(debug=True), at=AT)
    assert verified.claims.debug is True


def test_collateral_is_ignored() -> None:
    verifier = SimVerifier([KEY.public_key_pem()])
    assert verifier.verify(evidence(), collateral=b"anything", at=AT).claims.simulated


def test_untrusted_key_is_refused() -> None:
    verifier = SimVerifier([OTHER_KEY.public_key_pem()])
    with pytest.raises(EvidenceSignatureError, match=f"untrusted key \\(sha256 {KEY.fingerprint}"):
        verifier.verify(evidence(), collateral=None, at=AT)
    with pytest.raises(EvidenceSignatureError, match="trusted: none"):
        SimVerifier([]).verify(evidence(), collateral=None, at=AT)


def test_any_of_several_trusted_keys() -> None:
    verifier = SimVerifier([OTHER_KEY.public_key_pem(), KEY.public_key_pem()])
    assert verifier.verify(evidence(), collateral=None, at=AT).claims.simulated
    assert verifier.fingerprints == tuple(sorted([KEY.fingerprint, OTHER_KEY.fingerprint]))


def _expected_error(offset: int) -> type[AttestationError]:
    if offset < 8:
        return EvidenceFormatError  # magic
    if offset < 10:
        return UnsupportedEvidenceError  # version
    if offset < 14:
        return EvidenceFormatError  # flags (0x80 is an unknown bit) or measurement length
    # measurement, report_data and signature break the signature; a changed public
    # key is no longer a trusted one.
    return EvidenceSignatureError


def test_tampering_any_byte_gives_a_specific_error() -> None:
    blob = evidence()
    verifier = SimVerifier([KEY.public_key_pem()])
    for offset in range(len(blob)):
        tampered = bytearray(blob)
        tampered[offset] ^= 0x80
        expected = _expected_error(offset)
        with pytest.raises(AttestationError) as info:
            verifier.verify(bytes(tampered), collateral=None, at=AT)
        assert type(info.value) is expected, (offset, info.value)


def test_flipping_the_debug_flag_breaks_the_signature() -> None:
    tampered = bytearray(evidence())
    tampered[11] ^= layout.FLAG_DEBUG
    with pytest.raises(EvidenceSignatureError, match="signature does not verify"):
        SimVerifier([KEY.public_key_pem()]).verify(bytes(tampered), at=AT)


def test_swapping_in_another_signer_is_refused() -> None:
    # An attacker re-signs with their own key and embeds it: only trusted keys count.
    forged = SimProvider(OTHER_KEY, measurement=MEASUREMENT).get_evidence(b"nonce")
    with pytest.raises(EvidenceSignatureError, match="untrusted key"):
        SimVerifier([KEY.public_key_pem()]).verify(forged, at=AT)


def test_truncated_and_extended() -> None:
    verifier = SimVerifier([KEY.public_key_pem()])
    blob = evidence()
    with pytest.raises(EvidenceFormatError, match="length"):
        verifier.verify(blob[:-1], at=AT)
    with pytest.raises(EvidenceFormatError, match="length"):
        verifier.verify(blob + b"\x00", at=AT)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        SimVerifier([KEY.public_key_pem()]).verify(evidence(), at=datetime(2025, 1, 1))


def test_report_data_limits() -> None:
    provider = SimProvider(KEY, measurement=MEASUREMENT)
    assert len(provider.get_evidence(b"\x01" * 64)) == layout.evidence_size(32)
    with pytest.raises(ConfigError, match="report_data: expected at most 64 bytes, got 65"):
        provider.get_evidence(b"\x01" * 65)
    with pytest.raises(ConfigError, match="report_data: expected bytes, got str"):
        provider.get_evidence("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("measurement", [b"", b"\x00" * 65])
def test_measurement_limits(measurement: bytes) -> None:
    with pytest.raises(ConfigError, match=r"measurement: expected 1\.\.64 bytes"):
        SimProvider(KEY, measurement=measurement)


def test_provider_properties() -> None:
    provider = SimProvider(KEY, measurement=MEASUREMENT)
    assert provider.evidence_type is EvidenceType.SIM
    assert MEASUREMENT.hex() in repr(provider)
    with pytest.raises(ConfigError, match="key: expected a SimKey"):
        SimProvider(b"key", measurement=MEASUREMENT)  # type: ignore[arg-type]


def test_verifier_refuses_bad_trust_anchors() -> None:
    with pytest.raises(ConfigError, match=r"trusted_public_keys\[0\]: expected a PEM Ed25519"):
        SimVerifier([b"not a pem"])
    p256 = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match=r"trusted_public_keys\[0\]: expected an Ed25519 key"):
        SimVerifier([p256])
    with pytest.raises(ConfigError, match="single value"):
        SimVerifier(KEY.public_key_pem())  # type: ignore[arg-type]


# -- SimKey ----------------------------------------------------------------------------


def test_key_save_load(tmp_path: Path) -> None:
    path = tmp_path / "sim.pem"
    KEY.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = SimKey.load(path)
    assert loaded.public_key_pem() == KEY.public_key_pem()
    assert loaded.fingerprint == KEY.fingerprint


def test_key_load_refuses_open_permissions(tmp_path: Path) -> None:
    path = tmp_path / "sim.pem"
    KEY.save(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"permissions too open .* expected 0600 .* got 0644"):
        SimKey.load(path)


def test_key_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read sim key"):
        SimKey.load(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"junk")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="expected an unencrypted PEM PKCS#8 Ed25519 key"):
        SimKey.load(bad)
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    p256.chmod(0o600)
    with pytest.raises(ConfigError, match="expected an Ed25519 key, got"):
        SimKey.load(p256)


def test_key_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "sim.pem"
    first = SimKey.load_or_create(path)
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    second = SimKey.load_or_create(path)
    assert first.fingerprint == second.fingerprint
    assert [p.name for p in path.parent.iterdir()] == ["sim.pem"]  # no temp files left


def test_key_load_or_create_keeps_a_concurrent_creators_key(tmp_path: Path) -> None:
    path = tmp_path / "sim.pem"
    mine = SimKey.generate()
    assert mine._save(path, exclusive=True)
    theirs = SimKey.generate()
    assert not theirs._save(path, exclusive=True)
    assert SimKey.load(path).fingerprint == mine.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["sim.pem"]


def test_key_never_shows_itself() -> None:
    pem = KEY._private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert pem.hex() not in repr(KEY)
    assert repr(KEY) == f"SimKey(fingerprint={KEY.fingerprint[:16]}…)"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(KEY)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.booleans())
def test_any_report_data_round_trips(report_data: bytes, debug: bool) -> None:
    claims = (
        SimVerifier([KEY.public_key_pem()]).verify(evidence(report_data, debug=debug), at=AT).claims
    )
    assert claims.report_data == report_data.ljust(64, b"\x00")
    assert claims.debug is debug


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_evidence_raises_only_attestation_errors(data: st.DataObject) -> None:
    blob = bytearray(evidence())
    for _ in range(data.draw(st.integers(1, 4))):
        offset = data.draw(st.integers(0, len(blob) - 1))
        blob[offset] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    with contextlib.suppress(AttestationError):
        SimVerifier([KEY.public_key_pem()]).verify(bytes(blob[:cut]), at=AT)
