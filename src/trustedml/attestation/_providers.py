"""Evidence providers: get a quote or report from the TEE this process runs in.

- :class:`GramineProvider`: an SGX enclave under Gramine (``/dev/attestation``).
- :class:`ConfigfsTsmProvider`: a TDX or SEV-SNP guest on Linux ≥ 6.7
  (``/sys/kernel/config/tsm/report``, Documentation/ABI/testing/configfs-tsm-report).
- :class:`~trustedml.attestation.SimProvider`: development stand-in, no hardware.

Both hardware providers take their root directory as a parameter so that tests
can run them against a tree they build.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trustedml.attestation._model import EvidenceProvider, EvidenceType
from trustedml.attestation._sim import SimProvider, pad_report_data
from trustedml.errors import ConfigError, EvidenceProviderError

__all__ = ["ConfigfsTsmProvider", "GramineProvider", "get_provider"]

GRAMINE_ROOT = Path("/dev/attestation")
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
_TSM_PROVIDERS = {"tdx_guest": EvidenceType.TDX, "sev_guest": EvidenceType.SNP}
_TSM_PRIVLEVEL_MAX = 3


def _describe(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read_file(path: Path, who: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EvidenceProviderError(f"{who}: cannot read {path}: {_describe(exc)}") from exc


def _write_existing(path: Path, data: bytes, who: str, *, missing_hint: str = "") -> None:
    # No O_CREAT: a missing pseudo-file or attribute means no such TEE interface, not a
    # file to make.
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        hint = missing_hint if isinstance(exc, FileNotFoundError) else ""
        raise EvidenceProviderError(f"{who}: cannot write {path}: {_describe(exc)}{hint}") from exc
    if written != len(data):
        raise EvidenceProviderError(
            f"{who}: short write to {path}: expected {len(data)} bytes, got {written}"
        )


class GramineProvider:
    """SGX DCAP quotes from Gramine's ``/dev/attestation`` pseudo-files.

    Writes report_data to ``user_report_data`` and reads ``quote``; the manifest
    must set ``sgx.remote_attestation = "dcap"``.
    """

    # Gramine keeps one user_report_data per process: serialize write-then-read pairs.
    _lock = threading.Lock()

    def __init__(self, root: Path = GRAMINE_ROOT) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def evidence_type(self) -> EvidenceType:
        self._check_dcap()
        return EvidenceType.SGX

    def get_evidence(self, report_data: bytes) -> bytes:
        """Return an SGX quote whose report_data is ``report_data`` (≤ 64 bytes, zero-padded)."""
        padded = pad_report_data(report_data)
        self._check_dcap()
        with self._lock:
            self._write("user_report_data", padded)
            quote = self._read("quote")
        if not quote:
            raise EvidenceProviderError(f"gramine: {self._root / 'quote'} is empty")
        return quote

    def _check_dcap(self) -> None:
        if not self._root.is_dir():
            raise EvidenceProviderError(f"not running inside Gramine (no {self._root})")
        kind = self._read("attestation_type").decode("ascii", "replace").strip()
        if kind != "dcap":
            raise EvidenceProviderError(
                f"gramine: {self._root / 'attestation_type'} is {kind!r}, expected 'dcap' "
                '(set sgx.remote_attestation = "dcap" in the manifest)'
            )

    def _read(self, name: str) -> bytes:
        return _read_file(self._root / name, "gramine")

    def _write(self, name: str, data: bytes) -> None:
        _write_existing(self._root / name, data, "gramine")

    def __repr__(self) -> str:
        return f"GramineProvider(root={str(self._root)!r})"


class ConfigfsTsmProvider:
    """TDX or SEV-SNP evidence through the kernel's configfs-tsm report interface.

    Each call creates its own report entry under ``root`` (``name``, or a unique
    one), reads ``generation``, writes ``privlevel`` (if given) and ``inblob``,
    reads ``outblob`` and ``auxblob``, and checks that ``generation`` advanced by
    exactly the number of writes: otherwise another writer raced and the outblob
    may not carry our report_data. The entry is removed afterwards.

    ``last_auxblob`` holds the auxblob of the last call (for SEV-SNP the
    certificate table with the VCEK), or None when there was none.
    """

    def __init__(
        self,
        root: Path = TSM_REPORT_ROOT,
        name: str | None = None,
        *,
        privlevel: int | None = None,
    ) -> None:
        if name is not None and (
            not isinstance(name, str) or not name or "/" in name or name in (".", "..")
        ):
            raise ConfigError(f"name: expected a single path component, got {name!r}")
        if privlevel is not None and (
            not isinstance(privlevel, int)
            or isinstance(privlevel, bool)
            or not 0 <= privlevel <= _TSM_PRIVLEVEL_MAX
        ):
            raise ConfigError(f"privlevel: expected 0..{_TSM_PRIVLEVEL_MAX}, got {privlevel!r}")
        self._root = Path(root)
        self._name = name
        self._privlevel = privlevel
        self._evidence_type: EvidenceType | None = None
        self.last_auxblob: bytes | None = None

    @property
    def root(self) -> Path:
        return self._root

    @property
    def evidence_type(self) -> EvidenceType:
        """TDX or SNP, from the kernel's ``provider`` attribute (probed once)."""
        if self._evidence_type is None:
            with self._entry() as entry:
                self._evidence_type = self._provider(entry)
        return self._evidence_type

    def get_evidence(self, report_data: bytes) -> bytes:
        """Return a TDX quote or SEV-SNP report whose report_data is ``report_data``
        (≤ 64 bytes, zero-padded)."""
        inblob = pad_report_data(report_data)
        self.last_auxblob = None
        with self._entry() as entry:
            kind = self._provider(entry)
            before = self._generation(entry)
            writes = 0
            if self._privlevel is not None:
                self._write_attribute(entry, "privlevel", f"{self._privlevel}\n".encode())
                writes += 1
            self._write_attribute(entry, "inblob", inblob)
            writes += 1
            outblob = self._read_attribute(entry, "outblob")
            auxblob = self._read_optional(entry, "auxblob")
            after = self._generation(entry)
            if after != before + writes:
                raise EvidenceProviderError(
                    f"configfs-tsm: generation changed from {before} to {after} "
                    f"(expected {before + writes}): another writer raced on {entry}; retry"
                )
        if not outblob:
            raise EvidenceProviderError(f"configfs-tsm: {entry / 'outblob'} is empty")
        self._evidence_type = kind
        self.last_auxblob = auxblob or None
        return outblob

    # -- the kernel interface; tests override these to play the kernel's part --------

    def _create_entry(self, entry: Path) -> None:
        entry.mkdir()

    def _remove_entry(self, entry: Path) -> None:
        entry.rmdir()

    def _read_attribute(self, entry: Path, name: str) -> bytes:
        return _read_file(entry / name, "configfs-tsm")

    def _write_attribute(self, entry: Path, name: str, data: bytes) -> None:
        # configfs attributes exist once the entry does.
        missing = (
            " (this TSM has no privilege levels; privlevel is for SEV-SNP)"
            if name == "privlevel"
            else ""
        )
        _write_existing(entry / name, data, "configfs-tsm", missing_hint=missing)

    # -- helpers -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _entry(self) -> Iterator[Path]:
        if not self._root.is_dir():
            raise EvidenceProviderError(
                f"configfs-tsm: no {self._root} (needs a TDX or SEV-SNP guest with Linux ≥ 6.7, "
                "CONFIG_TSM_REPORTS and configfs mounted)"
            )
        name = self._name or f"trustedml-{os.getpid()}-{secrets.token_hex(8)}"
        entry = self._root / name
        try:
            self._create_entry(entry)
        except FileExistsError:
            raise EvidenceProviderError(
                f"configfs-tsm: report entry {entry} already exists (in use by another caller?)"
            ) from None
        except OSError as exc:
            raise EvidenceProviderError(
                f"configfs-tsm: cannot create report entry {entry}: {_describe(exc)}"
            ) from exc
        try:
            yield entry
        finally:
            # A leftover entry is harmless; never let cleanup hide the real outcome.
            with contextlib.suppress(OSError):
                self._remove_entry(entry)

    def _provider(self, entry: Path) -> EvidenceType:
        raw = self._read_attribute(entry, "provider")
        name = raw.decode("ascii", "replace").strip()
        try:
            return _TSM_PROVIDERS[name]
        except KeyError:
            raise EvidenceProviderError(
                f"configfs-tsm: {entry / 'provider'} is {name!r}, expected one of "
                f"{', '.join(sorted(_TSM_PROVIDERS))}"
            ) from None

    def _generation(self, entry: Path) -> int:
        raw = self._read_attribute(entry, "generation")
        text = raw.decode("ascii", "replace").strip()
        if not text.isdigit():
            raise EvidenceProviderError(
                f"configfs-tsm: {entry / 'generation'}: expected a decimal counter, got {text!r}"
            )
        return int(text)

    def _read_optional(self, entry: Path, name: str) -> bytes | None:
        if not (entry / name).exists():
            return None
        return self._read_attribute(entry, name)

    def __repr__(self) -> str:
        return (
            f"ConfigfsTsmProvider(root={str(self._root)!r}, name={self._name!r}, "
            f"privlevel={self._privlevel!r})"
        )


_PROVIDERS: dict[str, type[Any]] = {
    "gramine": GramineProvider,
    "configfs-tsm": ConfigfsTsmProvider,
    "sim": SimProvider,
}


def get_provider(name: str, /, **kwargs: Any) -> EvidenceProvider:
    """Return the evidence provider called ``name`` ("gramine", "configfs-tsm", "sim").

    ``kwargs`` go to its constructor (``name`` is positional-only, so configfs-tsm's
    own ``name=`` passes through); "sim" needs ``key=`` (a :class:`SimKey`) and
    ``measurement=`` (bytes).
    """
    try:
        cls = _PROVIDERS[name]
    except KeyError:
        raise ConfigError(
            f"evidence provider: expected one of {', '.join(sorted(_PROVIDERS))}, got {name!r}"
        ) from None
    if name == "sim" and not {"key", "measurement"} <= kwargs.keys():
        raise ConfigError(
            "evidence provider 'sim': expected key= (a SimKey) and measurement= (bytes), "
            f"got {', '.join(sorted(kwargs)) or 'neither'}"
        )
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"evidence provider {name!r}: {exc}") from None
    provider: EvidenceProvider = cls(**kwargs)
    return provider
