"""X.509 for both attestation verifiers: strict loading of certificates and CRLs,
pinned packaged roots, names, issued-by, CRL and ECDSA signature checks, validity
windows, revocation and extensions.

pyca/cryptography parses lazily and raises many exception types (ValueError,
UnsupportedAlgorithm, DuplicateExtension, InvalidVersion...) from attribute reads
long after loading. Here every certificate and CRL is read in full once, when it is
loaded, and any failure becomes the caller's :class:`~trustedml.errors.AttestationError`
subclass naming the field; the objects handed back are then safe to read, except
their public keys, which only :func:`ec_public_key`, :func:`issued_by` and
:func:`crl_signed_by` touch (a bad key is a chain problem, not a format one).

On top of what cryptography checks, the outer DER is read with the strict reader of
:mod:`trustedml.hazmat.attestation.der`: the signature and public-key BIT STRINGs
must have 0 unused bits (cryptography accepts 1..7 with zero padding: a second
encoding of the same certificate).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from trustedml.errors import (
    AttestationError,
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    EvidenceFormatError,
)
from trustedml.hazmat.attestation import der as _der

__all__ = [
    "ErrorType",
    "check_current",
    "check_validity",
    "common_name",
    "crl_signed_by",
    "describe",
    "ec_public_key",
    "ecdsa_verifies",
    "is_ca",
    "issued_by",
    "kds_extensions",
    "load_crl",
    "load_der_certificate",
    "load_pem_certificates",
    "packaged",
    "pinned_certificate",
    "revocation",
    "serial_number",
    "unrecognized_extension",
]

ErrorType = type[AttestationError]
_T = TypeVar("_T")

# Everything pyca/cryptography raises for malformed input (none share a base class
# narrower than Exception).
_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_VERIFY_ERRORS: tuple[type[Exception], ...] = (*_PARSE_ERRORS, InvalidSignature)
# warnings.catch_warnings swaps process-wide state: never let two loads nest it.
_WARNINGS_LOCK = threading.Lock()
_MAX_DETAIL = 160


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


@contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _guarded(
    der: bytes,
    frame: Callable[[bytes, str], object],
    load: Callable[[bytes], _T],
    read_all: Callable[[_T], None],
    form: str,
) -> _T | str:
    # The object read in full, or what is wrong with it. The strict DER frame first,
    # then cryptography, which warns (rather than fails) about some malformed fields,
    # e.g. a country name of the wrong length; only the deprecation warnings for what
    # real vendor certificates do (AMD's VCEKs have serial number 0) are let through.
    try:
        frame(der, "malformed DER")
    except EvidenceFormatError as exc:
        return f"not a valid {form}: {exc}"
    with _quiet() as caught:
        try:
            loaded = load(der)
            read_all(loaded)
        except _PARSE_ERRORS as exc:
            return f"not a valid {form}: {_detail(exc)}"
    for warning in caught:
        if not issubclass(warning.category, CryptographyDeprecationWarning):
            return f"not a valid {form}: {warning.message}"
    return loaded


def _checked(parsed: _T | str, what: str, error: ErrorType) -> _T:
    if isinstance(parsed, str):
        raise error(f"{what}: {parsed}")
    return parsed


# --- strict DER frame -------------------------------------------------------------------


def _signed_frame(der: bytes, what: str) -> list[_der.Tlv]:
    """The items of a signed X.509 object (certificate or CRL): to-be-signed part,
    signature algorithm, and an octet-aligned signature BIT STRING."""
    body = _der.read_single(der, _der.SEQUENCE, what)
    items = _der.sequence_items(body, what)
    if len(items) != 3:
        raise EvidenceFormatError(
            f"{what}: expected 3 elements (to-be-signed, algorithm, signature), got {len(items)}"
        )
    items[0].expect(_der.SEQUENCE, f"{what}: to-be-signed part")
    items[1].expect(_der.SEQUENCE, f"{what}: signature algorithm")
    _der.decode_octet_aligned_bit_string(
        items[2].expect(_der.BIT_STRING, f"{what}: signature"), f"{what}: signature"
    )
    return items


def _check_certificate_der(der: bytes, what: str) -> None:
    tbs = _der.sequence_items(_signed_frame(der, what)[0].value, what)
    # version [0] is optional; then serial, signature, issuer, validity, subject, key.
    index = 6 if tbs and tbs[0].tag == 0xA0 else 5
    if len(tbs) <= index:
        raise EvidenceFormatError(f"{what}: to-be-signed part has no subject public key info")
    spki = _der.sequence_items(
        tbs[index].expect(_der.SEQUENCE, f"{what}: subject public key info"), what
    )
    if len(spki) != 2:
        raise EvidenceFormatError(
            f"{what}: subject public key info: expected 2 elements, got {len(spki)}"
        )
    _der.decode_octet_aligned_bit_string(
        spki[1].expect(_der.BIT_STRING, f"{what}: public key"), f"{what}: public key"
    )


# --- loading ----------------------------------------------------------------------------


def _read_certificate(cert: x509.Certificate) -> None:
    # Every lazily parsed part the verifiers read, so that no later read can raise.
    # Not the public key: a bad key is a chain problem, met by issued_by and
    # ec_public_key (and cryptography may only reject it when it is used).
    _ = (cert.version, cert.serial_number, cert.subject, cert.issuer)
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid)
    _ = cert.extensions, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()


@functools.lru_cache(maxsize=128)
def _parse_certificate(der: bytes) -> x509.Certificate | str:
    # Failures are cached too (a pure function of the bytes); the caller raises its
    # own error type.
    return _guarded(
        der,
        _check_certificate_der,
        x509.load_der_x509_certificate,
        _read_certificate,
        "certificate",
    )


def load_der_certificate(der: bytes, what: str, error: ErrorType) -> x509.Certificate:
    """One DER certificate, read in full; ``error`` (naming ``what``) if malformed."""
    return _checked(_parse_certificate(bytes(der)), what, error)


def _pem_blocks(data: bytes, label: bytes) -> Iterator[tuple[int, bytes | None]]:
    # Lenient: the DER of every block with this label, text around blocks ignored
    # (as OpenSSL does). Yields (block number, DER or None when the base64 is bad).
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    pos, number = 0, 0
    while (start := data.find(begin, pos)) >= 0:
        number += 1
        stop = data.find(end, start)
        if stop < 0:
            yield number, None
            return
        body = b"".join(data[start + len(begin) : stop].split())
        try:
            yield number, base64.b64decode(body, validate=True)
        except binascii.Error:
            yield number, None
        pos = stop + len(end)


def _strict_pem_blocks(
    data: bytes, label: bytes, what: str, error: ErrorType
) -> Iterator[tuple[int, bytes]]:
    # Canonical PEM only, as Intel's PCS and quoting enclave write it: each block
    # "-----BEGIN <label>-----\n", base64 in 64-character lines ending "\n", the END
    # line, then "\n" or nothing; at most one NUL at the very end (certification data
    # type 5 is a C string). Nothing else, so that no changed bit goes unnoticed.
    text = data[:-1] if data.endswith(b"\x00") else data
    begin, end = b"-----BEGIN " + label + b"-----\n", b"-----END " + label + b"-----"
    pos, number = 0, 0
    while pos < len(text):
        number += 1
        where = f"{what}: {label.decode().lower()} {number}"
        if not text.startswith(begin, pos):
            raise error(
                f"{where}: expected a line '-----BEGIN {label.decode()}-----' at byte {pos}, "
                f"got {bytes(text[pos : pos + 16])!r}"
            )
        stop = text.find(end, pos)
        if stop < 0:
            raise error(f"{where}: no '-----END {label.decode()}-----' line")
        body = text[pos + len(begin) : stop]
        pos = stop + len(end)
        if pos < len(text):
            if text[pos] != 0x0A:
                raise error(f"{where}: expected a newline after the END line at byte {pos}")
            pos += 1
        try:
            der = base64.b64decode(b"".join(body.split(b"\n")), validate=True)
        except binascii.Error as exc:
            raise error(f"{where}: bad base64 ({_detail(exc)})") from exc
        encoded = base64.b64encode(der)
        canonical = b"".join(encoded[i : i + 64] + b"\n" for i in range(0, len(encoded), 64))
        if body != canonical:
            raise error(
                f"{where}: not canonical PEM (expected base64 in 64-character lines, each "
                "ending in a newline, with no other characters or stray bits)"
            )
        yield number, der


def load_pem_certificates(
    data: bytes,
    what: str,
    error: ErrorType,
    *,
    strict: bool = False,
    max_count: int | None = None,
) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM bundle, each read in full.

    ``strict`` accepts only canonical PEM and nothing between blocks (Intel's
    chains); otherwise text around the blocks is ignored. Errors name ``what`` and the
    certificate's position ("certificate 2").
    """
    blocks: Iterator[tuple[int, bytes | None]] = (
        _strict_pem_blocks(data, b"CERTIFICATE", what, error)
        if strict
        else _pem_blocks(data, b"CERTIFICATE")
    )
    certs: list[x509.Certificate] = []
    for number, der in blocks:
        if max_count is not None and number > max_count:
            raise error(f"{what}: more than {max_count} certificates")
        if der is None:
            raise error(f"{what}: certificate {number}: bad PEM (base64 or END line)")
        certs.append(load_der_certificate(der, f"{what}: certificate {number}", error))
    if not certs:
        raise error(f"{what}: no PEM certificate")
    return tuple(certs)


def _read_crl(crl: x509.CertificateRevocationList) -> None:
    _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions)
    _ = (crl.signature_algorithm_oid, crl.signature_hash_algorithm, crl.issuer.rfc4514_string())
    for entry in crl:
        _ = (entry.serial_number, entry.revocation_date_utc, entry.extensions)


@functools.lru_cache(maxsize=64)
def _parse_crl(data: bytes) -> x509.CertificateRevocationList | str:
    der: bytes | None = data
    if data.lstrip().startswith(b"-----BEGIN"):
        blocks = list(_pem_blocks(data, b"X509 CRL"))
        if len(blocks) != 1:
            return f"not a valid CRL: expected one PEM 'X509 CRL' block, got {len(blocks)}"
        der = blocks[0][1]
        if der is None:
            return "not a valid CRL: bad PEM (base64 or END line)"
    assert der is not None
    return _guarded(der, _signed_frame, x509.load_der_x509_crl, _read_crl, "CRL")


def load_crl(data: bytes, what: str, error: ErrorType) -> x509.CertificateRevocationList:
    """A CRL in PEM (one block) or DER, read in full (every entry too)."""
    return _checked(_parse_crl(bytes(data)), what, error)


# --- packaged roots ----------------------------------------------------------------------


def packaged(resource: str) -> bytes:
    """A file shipped in the ``trustedml.attestation`` package (``roots/...``)."""
    return resources.files("trustedml.attestation").joinpath(resource).read_bytes()


def pinned_certificate(resource: str, sha256: str, what: str) -> x509.Certificate:
    """The packaged DER certificate ``resource``, whose SHA-256 must be ``sha256``: a
    swapped package file is a CertificateChainError, never a new trust anchor."""
    der = packaged(resource)
    digest = hashlib.sha256(der).hexdigest()
    if digest != sha256:
        raise CertificateChainError(
            f"{what} {resource}: SHA-256 {digest} is not the pinned {sha256}"
        )
    return load_der_certificate(der, f"{what} {resource}", CertificateChainError)


# --- names, checks, extensions ------------------------------------------------------------


def common_name(name: x509.Name) -> str:
    """The one CN of ``name``, or "" when it has none or several."""
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = attrs[0].value if len(attrs) == 1 else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def describe(cert: x509.Certificate) -> str:
    """The certificate's CN (or its whole subject) quoted, for messages."""
    return repr(common_name(cert.subject) or cert.subject.rfc4514_string())


@functools.lru_cache(maxsize=128)
def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """True when ``parent`` names and signs ``child``. A pure function of both
    certificates: cached, which saves a signature check per certificate for the
    collateral chains every quote of a platform shares."""
    try:
        child.verify_directly_issued_by(parent)
    except _VERIFY_ERRORS:
        return False
    return True


@functools.lru_cache(maxsize=64)
def crl_signed_by(data: bytes, issuer: x509.Certificate) -> bool:
    """True when the CRL in ``data`` (loaded with :func:`load_crl` before) names
    ``issuer`` as its issuer and verifies with its key. Cached: every quote of a
    platform shares its CRLs."""
    crl = _parse_crl(bytes(data))
    if isinstance(crl, str) or crl.issuer != issuer.subject:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except _VERIFY_ERRORS:
        return False


def revocation(
    crl: x509.CertificateRevocationList, cert: x509.Certificate
) -> x509.RevokedCertificate | None:
    """The CRL's entry for ``cert``'s serial number, if it lists it."""
    with _quiet():  # the serial-number deprecation warning was judged at load time
        serial = cert.serial_number
    return crl.get_revoked_certificate_by_serial_number(serial)


def serial_number(cert: x509.Certificate) -> int:
    """The serial number, without repeating the warning judged at load time."""
    with _quiet():
        return cert.serial_number


def check_validity(cert: x509.Certificate, at: datetime, what: str) -> None:
    """CertificateChainError unless ``cert`` is valid at ``at``."""
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < before:
        raise CertificateChainError(
            f"{what}: {describe(cert)} is not valid at {at.isoformat()}: valid from "
            f"{before.isoformat()}"
        )
    if at > after:
        raise CertificateChainError(
            f"{what}: {describe(cert)} expired {after.isoformat()}: it is not valid at "
            f"{at.isoformat()}"
        )


def check_current(what: str, start: datetime, end: datetime | None, at: datetime) -> datetime:
    """CollateralExpiredError unless ``at`` lies in ``start``..``end`` (a CRL's
    thisUpdate..nextUpdate, or signed collateral's issueDate..nextUpdate);
    CollateralError when there is no ``end``. Returns ``end``."""
    if end is None:
        raise CollateralError(f"{what}: has no nextUpdate")
    if at < start:
        raise CollateralExpiredError(
            f"{what}: not valid yet at {at.isoformat()} (issued {start.isoformat()})"
        )
    if at > end:
        raise CollateralExpiredError(
            f"{what}: expired at {at.isoformat()} (nextUpdate {end.isoformat()})"
        )
    return end


def ecdsa_verifies(
    key: ec.EllipticCurvePublicKey,
    r: int,
    s: int,
    message: bytes,
    algorithm: hashes.HashAlgorithm,
) -> bool:
    """True when (``r``, ``s``) is ``key``'s ECDSA signature over ``message``: both
    vendors sign with raw r and s, not the DER form cryptography takes."""
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def ec_public_key(
    cert: x509.Certificate, curve: type[ec.EllipticCurve], what: str
) -> ec.EllipticCurvePublicKey:
    """The certificate's key, which must be ECDSA on ``curve`` (CertificateChainError)."""
    try:
        key = cert.public_key()
    except _PARSE_ERRORS as exc:
        raise CertificateChainError(f"{what}: public key: {_detail(exc)}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise CertificateChainError(f"{what}: expected an ECDSA {curve.name} public key")
    return key


def is_ca(cert: x509.Certificate) -> bool:
    """True when basicConstraints says CA."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def unrecognized_extension(cert: x509.Certificate, oid: str) -> bytes | None:
    """The raw value of the extension ``oid`` that cryptography does not decode
    (vendor extensions), or None if absent."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def kds_extensions(cert: x509.Certificate, prefix: str) -> dict[str, bytes]:
    """Raw values of the undecoded extensions whose OIDs start with ``prefix``."""
    return {
        ext.oid.dotted_string: ext.value.value
        for ext in cert.extensions
        if isinstance(ext.value, x509.UnrecognizedExtension)
        and ext.oid.dotted_string.startswith(prefix)
    }
