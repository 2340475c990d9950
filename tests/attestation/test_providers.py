from __future__ import annotations

import threading
from pathlib import Path

import pytest

from trustedml.attestation._model import EvidenceProvider, EvidenceType
from trustedml.attestation._providers import ConfigfsTsmProvider, GramineProvider, get_provider
from trustedml.attestation._sim import SimKey, SimProvider
from trustedml.errors import ConfigError, EvidenceProviderError

# -- Gramine ----------------------------------------------------------------------------

QUOTE = bytes(range(256)) * 5


def gramine_tree(root: Path, attestation_type: str = "dcap") -> Path:
    root.mkdir()
    (root / "attestation_type").write_text(attestation_type)
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(QUOTE)
    return root


def test_gramine_writes_report_data_and_returns_the_quote(tmp_path: Path) -> None:
    root = gramine_tree(tmp_path / "attestation")
    provider = GramineProvider(root)
    assert isinstance(provider, EvidenceProvider)
    assert provider.evidence_type is EvidenceType.SGX
    assert provider.get_evidence(b"nonce") == QUOTE
    assert (root / "user_report_data").read_bytes() == b"nonce" + b"\x00" * 59


def test_gramine_outside_gramine(tmp_path: Path) -> None:
    provider = GramineProvider(tmp_path / "attestation")
    with pytest.raises(EvidenceProviderError, match="not running inside Gramine"):
        provider.get_evidence(b"x")
    with pytest.raises(EvidenceProviderError, match="not running inside Gramine"):
        _ = provider.evidence_type


def test_gramine_default_root_is_dev_attestation() -> None:
    assert GramineProvider().root == Path("/dev/attestation")


@pytest.mark.parametrize("kind", ["none", "epid", ""])
def test_gramine_needs_dcap(tmp_path: Path, kind: str) -> None:
    provider = GramineProvider(gramine_tree(tmp_path / "attestation", kind))
    with pytest.raises(
        EvidenceProviderError, match=f"attestation_type is {kind!r}, expected 'dcap'"
    ):
        provider.get_evidence(b"x")


@pytest.mark.parametrize("missing", ["attestation_type", "user_report_data", "quote"])
def test_gramine_missing_files(tmp_path: Path, missing: str) -> None:
    root = gramine_tree(tmp_path / "attestation")
    (root / missing).unlink()
    with pytest.raises(EvidenceProviderError, match=f"gramine: cannot (read|write) .*{missing}"):
        GramineProvider(root).get_evidence(b"x")
    # The provider never creates a pseudo-file that is not there.
    assert not (root / missing).exists()


def test_gramine_empty_quote(tmp_path: Path) -> None:
    root = gramine_tree(tmp_path / "attestation")
    (root / "quote").write_bytes(b"")
    with pytest.raises(EvidenceProviderError, match="quote is empty"):
        GramineProvider(root).get_evidence(b"x")


def test_gramine_report_data_too_long(tmp_path: Path) -> None:
    provider = GramineProvider(gramine_tree(tmp_path / "attestation"))
    with pytest.raises(ConfigError, match="report_data: expected at most 64 bytes, got 65"):
        provider.get_evidence(b"x" * 65)


# -- configfs-tsm -----------------------------------------------------------------------


class FakeTsm(ConfigfsTsmProvider):
    """The provider with the kernel's side played in a plain directory tree.

    On mkdir the "kernel" populates the attributes; each write to inblob or
    privlevel bumps generation by ``bump`` (1 is what the kernel does; 2 acts as a
    racing writer) and produces the outblob from the inblob.
    """

    def __init__(
        self,
        root: Path,
        name: str | None = None,
        *,
        privlevel: int | None = None,
        provider: str = "tdx_guest",
        bump: int = 1,
        auxblob: bytes | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(root, name, privlevel=privlevel)
        self.kernel_provider = provider
        self.bump = bump
        self.auxblob = auxblob
        self.skip = skip
        self.created: list[Path] = []
        self.writes: list[tuple[str, bytes]] = []

    def _create_entry(self, entry: Path) -> None:
        super()._create_entry(entry)
        self.created.append(entry)
        files = {
            "generation": b"0\n",
            "provider": self.kernel_provider.encode() + b"\n",
            "inblob": b"",
            "outblob": b"",
        }
        if self.kernel_provider == "sev_guest":
            files["privlevel"] = b""
            files["privlevel_floor"] = b"0\n"
        if self.auxblob is not None:
            files["auxblob"] = self.auxblob
        for name, data in files.items():
            if name not in self.skip:
                (entry / name).write_bytes(data)

    def _remove_entry(self, entry: Path) -> None:
        # configfs removes attributes with the directory; a plain tree needs rmtree.
        for child in entry.iterdir():
            child.unlink()
        super()._remove_entry(entry)

    def _write_attribute(self, entry: Path, name: str, data: bytes) -> None:
        super()._write_attribute(entry, name, data)
        self.writes.append((name, data))
        generation = int((entry / "generation").read_text()) + self.bump
        (entry / "generation").write_text(f"{generation}\n")
        if name == "inblob" and "outblob" not in self.skip:
            (entry / "outblob").write_bytes(b"QUOTE:" + data + b":END")


def test_tsm_tdx_returns_outblob_exactly(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path)
    evidence = provider.get_evidence(b"nonce")
    assert evidence == b"QUOTE:" + b"nonce".ljust(64, b"\x00") + b":END"
    assert provider.writes == [("inblob", b"nonce".ljust(64, b"\x00"))]
    assert provider.evidence_type is EvidenceType.TDX
    assert provider.last_auxblob is None
    # The entry had a unique name and is gone afterwards.
    (entry,) = provider.created
    assert entry.parent == tmp_path
    assert entry.name.startswith("trustedml-")
    assert list(tmp_path.iterdir()) == []


def test_tsm_entry_names_are_unique(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path)
    provider.get_evidence(b"a")
    provider.get_evidence(b"b")
    assert len({p.name for p in provider.created}) == 2


def test_tsm_snp_with_auxblob_and_privlevel(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path, "mine", privlevel=2, provider="sev_guest", auxblob=b"certs")
    evidence = provider.get_evidence(b"\x01" * 64)
    assert evidence == b"QUOTE:" + b"\x01" * 64 + b":END"
    assert provider.writes == [("privlevel", b"2\n"), ("inblob", b"\x01" * 64)]
    assert provider.evidence_type is EvidenceType.SNP
    assert provider.last_auxblob == b"certs"
    assert provider.created == [tmp_path / "mine"]
    assert not (tmp_path / "mine").exists()


def test_tsm_empty_auxblob_is_none(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path, provider="sev_guest", auxblob=b"")
    provider.get_evidence(b"x")
    assert provider.last_auxblob is None


def test_tsm_auxblob_is_not_kept_from_an_earlier_call(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path, provider="sev_guest", auxblob=b"certs")
    provider.get_evidence(b"x")
    provider.bump = 2
    with pytest.raises(EvidenceProviderError, match="raced"):
        provider.get_evidence(b"y")
    assert provider.last_auxblob is None


@pytest.mark.parametrize("bump", [0, 2, 5])
def test_tsm_generation_race_is_detected(tmp_path: Path, bump: int) -> None:
    provider = FakeTsm(tmp_path, bump=bump)
    with pytest.raises(
        EvidenceProviderError,
        match=f"generation changed from 0 to {bump} \\(expected 1\\): another writer raced",
    ):
        provider.get_evidence(b"nonce")
    assert list(tmp_path.iterdir()) == []  # removed even on failure


def test_tsm_race_counts_the_privlevel_write(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path, privlevel=0, provider="sev_guest", bump=2)
    with pytest.raises(EvidenceProviderError, match=r"from 0 to 4 \(expected 2\)"):
        provider.get_evidence(b"nonce")


@pytest.mark.parametrize("kernel_provider", ["arm_cca_guest", "", "TDX_GUEST"])
def test_tsm_unknown_provider(tmp_path: Path, kernel_provider: str) -> None:
    provider = FakeTsm(tmp_path, provider=kernel_provider)
    with pytest.raises(
        EvidenceProviderError,
        match=f"provider is {kernel_provider!r}, expected one of sev_guest, tdx_guest",
    ):
        provider.get_evidence(b"x")
    with pytest.raises(EvidenceProviderError, match="expected one of sev_guest, tdx_guest"):
        _ = provider.evidence_type
    assert provider.writes == []  # refused before asking for a report


@pytest.mark.parametrize("missing", ["generation", "provider", "outblob", "inblob"])
def test_tsm_missing_attributes(tmp_path: Path, missing: str) -> None:
    provider = FakeTsm(tmp_path, skip=frozenset({missing}))
    with pytest.raises(
        EvidenceProviderError, match=f"configfs-tsm: cannot (read|write) .*{missing}"
    ):
        provider.get_evidence(b"x")
    assert list(tmp_path.iterdir()) == []


def test_tsm_privlevel_on_tdx(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path, privlevel=1)
    with pytest.raises(EvidenceProviderError, match="privlevel is for SEV-SNP"):
        provider.get_evidence(b"x")


def test_tsm_empty_outblob(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path)
    original = provider._write_attribute

    def write_without_output(entry: Path, name: str, data: bytes) -> None:
        original(entry, name, data)
        (entry / "outblob").write_bytes(b"")

    provider._write_attribute = write_without_output  # type: ignore[method-assign]
    with pytest.raises(EvidenceProviderError, match="outblob is empty"):
        provider.get_evidence(b"x")


def test_tsm_bad_generation(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path)
    original = provider._create_entry

    def create(entry: Path) -> None:
        original(entry)
        (entry / "generation").write_text("lots\n")

    provider._create_entry = create  # type: ignore[method-assign]
    with pytest.raises(EvidenceProviderError, match="generation: expected a decimal counter"):
        provider.get_evidence(b"x")


def test_tsm_no_configfs(tmp_path: Path) -> None:
    provider = ConfigfsTsmProvider(tmp_path / "tsm" / "report")
    with pytest.raises(EvidenceProviderError, match=r"configfs-tsm: no .*report .*Linux ≥ 6\.7"):
        provider.get_evidence(b"x")


def test_tsm_existing_entry_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("someone else's")
    provider = FakeTsm(tmp_path, "taken")
    with pytest.raises(EvidenceProviderError, match="taken already exists"):
        provider.get_evidence(b"x")
    assert (tmp_path / "taken" / "keep").exists()


def test_tsm_real_provider_on_a_plain_tree_never_creates_attribute_files(tmp_path: Path) -> None:
    # Without a kernel, mkdir gives an empty directory: reading provider fails cleanly.
    provider = ConfigfsTsmProvider(tmp_path)
    with pytest.raises(EvidenceProviderError, match=r"cannot read .*provider"):
        provider.get_evidence(b"x")
    assert list(tmp_path.iterdir()) == []


def test_tsm_concurrent_callers_use_separate_entries(tmp_path: Path) -> None:
    provider = FakeTsm(tmp_path)
    results: list[bytes] = []

    def call(i: int) -> None:
        results.append(provider.get_evidence(bytes([i])))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(
        b"QUOTE:" + bytes([i]).ljust(64, b"\x00") + b":END" for i in range(8)
    )


@pytest.mark.parametrize("name", ["", "a/b", ".", ".."])
def test_tsm_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="name: expected a single path component"):
        ConfigfsTsmProvider(tmp_path, name)


@pytest.mark.parametrize("privlevel", [-1, 4, True])
def test_tsm_bad_privlevel(tmp_path: Path, privlevel: int) -> None:
    with pytest.raises(ConfigError, match=r"privlevel: expected 0\.\.3"):
        ConfigfsTsmProvider(tmp_path, privlevel=privlevel)


def test_tsm_default_root() -> None:
    assert ConfigfsTsmProvider().root == Path("/sys/kernel/config/tsm/report")


# -- get_provider -----------------------------------------------------------------------


def test_get_provider(tmp_path: Path) -> None:
    gramine = get_provider("gramine", root=tmp_path)
    assert isinstance(gramine, GramineProvider)
    assert gramine.root == tmp_path
    tsm = get_provider("configfs-tsm", root=tmp_path, name="x", privlevel=1)
    assert isinstance(tsm, ConfigfsTsmProvider)
    key = SimKey.generate()
    sim = get_provider("sim", key=key, measurement=b"\x01" * 32)
    assert isinstance(sim, SimProvider)
    assert sim.evidence_type is EvidenceType.SIM


def test_get_provider_errors() -> None:
    with pytest.raises(ConfigError, match="expected one of configfs-tsm, gramine, sim, got 'tpm'"):
        get_provider("tpm")
    with pytest.raises(ConfigError, match=r"'sim': expected key= .* got neither"):
        get_provider("sim")
    with pytest.raises(ConfigError, match=r"'sim': expected key= .* got key"):
        get_provider("sim", key=SimKey.generate())
    with pytest.raises(ConfigError, match="'gramine': got an unexpected keyword argument 'path'"):
        get_provider("gramine", path="/dev/attestation")
