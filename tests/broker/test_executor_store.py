"""Executors of a cluster job attest for their own keys: the store a driver hands them
(trustedml.runtime.ExecutorKeyStore) against a real broker, with sim evidence; and the
attest request's optional `worker` label, validated and audited."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.conftest import Broker
from tests.broker.job_env import JOB_MEASUREMENT, job_environment
from tests.broker.peer import RawPeer
from trustedml import runtime
from trustedml.broker import KeyBrokerClient
from trustedml.data import DataKey
from trustedml.errors import BrokerRefusedError, ConfigError, EvidenceProviderError
from trustedml.runtime import ENV_SPARK_MASTER, ENV_WORKER, AttestedKeyStore, ExecutorKeyStore
from trustedml.tee import ENV_JOB_MEASUREMENT, ENV_TEE

WORKER_1 = bytes.fromhex("a1" * 48)  # the worker daemons' measurements
WORKER_2 = bytes.fromhex("a2" * 48)
MASTER = "spark://127.0.0.1:7077"


def cluster_policy(*workers: bytes, job: bytes = JOB_MEASUREMENT) -> dict[str, Any]:
    """What an operator writes for a cluster job: the driver (measured as the job) and
    each worker daemon, all for this job only."""
    return {
        "allow_simulated": True,
        "allow": [
            {"type": "sim", "measurement": m.hex(), "job_measurement": job.hex()}
            for m in (job, *workers)
        ],
    }


@pytest.fixture
def driver_env(
    fresh_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The driver of `trustedml submit --tee sim --broker URL --master spark://...`."""
    monkeypatch.setenv(ENV_SPARK_MASTER, MASTER)
    with job_environment(fresh_broker, tmp_path, monkeypatch):
        yield
    with runtime._STORE_LOCK:
        stores = list(runtime._EXECUTOR_STORES.values())
        runtime._EXECUTOR_STORES.clear()
    for store in stores:
        store.client.close()


def as_executor(monkeypatch: pytest.MonkeyPatch, measurement: bytes, worker: str | None) -> None:
    """This process becomes an executor forked by a worker daemon measured as
    ``measurement``: its TEE environment is the worker's, not the driver's."""
    monkeypatch.delenv(ENV_SPARK_MASTER, raising=False)
    monkeypatch.setenv(ENV_JOB_MEASUREMENT, measurement.hex())
    if worker is None:
        monkeypatch.delenv(ENV_WORKER, raising=False)
    else:
        monkeypatch.setenv(ENV_WORKER, worker)


def attests(broker: Broker) -> list[dict[str, Any]]:
    return [e for e in broker.admin().audit(limit=1000)["entries"] if e["event"] == "attest"]


def owner_key(broker: Broker, *workers: bytes) -> tuple[str, DataKey]:
    """A key for this job on ``workers``, and a data key the driver made under it."""
    key_id = broker.new_key(cluster_policy(*workers))
    client = broker.client(JOB_MEASUREMENT, job_measurement=JOB_MEASUREMENT)
    return key_id, client.generate_data_key(key_id)


def shipped(broker: Broker, key_ids: list[str]) -> bytes:
    """What the driver's runtime pickles for its executors."""
    driver = runtime.job_keystore()
    assert isinstance(driver, AttestedKeyStore)
    return pickle.dumps(driver.for_workers(key_ids))


@pytest.mark.usefixtures("driver_env")
def test_the_driver_hands_over_where_the_broker_is_and_nothing_secret(
    fresh_broker: Broker,
) -> None:
    key_id = fresh_broker.new_key(cluster_policy(WORKER_1))
    before = len(attests(fresh_broker))
    data = shipped(fresh_broker, [key_id])
    store = pickle.loads(data)  # noqa: S301 - bytes this test just made
    assert isinstance(store, ExecutorKeyStore)
    url, ca, job, key_ids = store.__reduce__()[1]
    assert (url, ca, job, key_ids) == (
        fresh_broker.url,
        fresh_broker.ca.read_bytes(),
        JOB_MEASUREMENT,
        (key_id,),
    )
    # The driver did not attest to make it: there is no session to leak.
    assert len(attests(fresh_broker)) == before
    assert b"token" not in data
    assert b"session" not in data
    assert repr(store) == f"ExecutorKeyStore({fresh_broker.url!r}, key_ids=[{key_id!r}])"
    assert store == pickle.loads(pickle.dumps(store))  # noqa: S301 - our own bytes
    # It narrows, never widens.
    assert store.for_workers([]) is store
    with pytest.raises(BrokerRefusedError, match="did not hand its executors") as info:
        store.for_workers(["other"])
    assert info.value.code == "not_in_scope"


@pytest.mark.usefixtures("driver_env")
def test_local_mode_still_shares_the_driver_session(
    fresh_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_SPARK_MASTER)
    key_id = fresh_broker.new_key(cluster_policy())
    assert not isinstance(runtime.job_keystore().for_workers([key_id]), ExecutorKeyStore)


@pytest.mark.usefixtures("driver_env")
def test_each_executor_attests_with_its_worker_evidence_once_per_process(
    fresh_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, made = owner_key(fresh_broker, WORKER_1, WORKER_2)
    owner = fresh_broker.client(JOB_MEASUREMENT, job_measurement=JOB_MEASUREMENT)
    data = shipped(fresh_broker, [key_id])
    before = len(attests(fresh_broker))

    as_executor(monkeypatch, WORKER_1, "worker-1@127.0.0.1")
    for _ in range(3):  # three tasks, three unpickled copies, one attestation
        task_store = pickle.loads(data)  # noqa: S301 - bytes this test just made
        assert task_store.unwrap_data_key(key_id, made.wrapped) == made.plaintext
    fresh = task_store.generate_data_key(key_id)  # a writing task, same session
    assert owner.unwrap_data_key(key_id, fresh.wrapped) == fresh.plaintext

    as_executor(monkeypatch, WORKER_2, "worker-2@127.0.0.1")
    other = pickle.loads(data)  # noqa: S301 - bytes this test just made
    assert other.unwrap_data_key(key_id, made.wrapped) == made.plaintext

    entries = [e for e in attests(fresh_broker)[before:] if "worker" in e["details"]]
    assert [(e["details"]["worker"], e["outcome"]) for e in entries] == [
        ("worker-1@127.0.0.1", "ok"),
        ("worker-2@127.0.0.1", "ok"),
    ]
    # Each executor proved its own worker's TEE, bound to this job.
    assert [e["measurement"] for e in entries] == [WORKER_1.hex(), WORKER_2.hex()]
    assert {e["details"]["job_measurement"] for e in entries} == {JOB_MEASUREMENT.hex()}


@pytest.mark.usefixtures("driver_env")
def test_a_worker_the_policy_does_not_allow_gets_nothing_and_is_named(
    fresh_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, made = owner_key(fresh_broker, WORKER_1)
    data = shipped(fresh_broker, [key_id])
    as_executor(monkeypatch, WORKER_2, "worker-2@198.18.0.12")
    with pytest.raises(BrokerRefusedError) as info:
        pickle.loads(data).unwrap_data_key(key_id, made.wrapped)  # noqa: S301 - our bytes
    message = str(info.value)
    assert message.startswith("worker worker-2@198.18.0.12: key broker refused POST /v1/attest")
    assert "policy_refused" in message
    assert f"got {WORKER_2.hex()[:16]}" in message  # the broker's reason: its measurement
    assert info.value.code == "policy_refused"
    assert info.value.reasons  # the broker's reasons, kept
    refused = attests(fresh_broker)[-1]
    assert refused["outcome"] == "refused"
    assert refused["details"]["worker"] == "worker-2@198.18.0.12"
    assert refused["measurement"] == WORKER_2.hex()


@pytest.mark.usefixtures("driver_env")
def test_an_allowed_worker_running_another_job_is_refused(
    fresh_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, made = owner_key(fresh_broker, WORKER_1)
    as_executor(monkeypatch, WORKER_1, "worker-1@127.0.0.1")
    other_job = ExecutorKeyStore(
        fresh_broker.url, fresh_broker.ca.read_bytes(), bytes(48), [key_id]
    )
    with pytest.raises(BrokerRefusedError, match="job_measurement") as info:
        other_job.unwrap_data_key(key_id, made.wrapped)
    assert str(info.value).startswith("worker worker-1@127.0.0.1: ")


@pytest.mark.usefixtures("driver_env")
def test_an_executor_outside_a_tee_is_named_too(
    fresh_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = fresh_broker.new_key(cluster_policy(WORKER_1))
    data = shipped(fresh_broker, [key_id])
    as_executor(monkeypatch, WORKER_1, None)
    monkeypatch.delenv(ENV_TEE)
    with pytest.raises(
        EvidenceProviderError,
        match=r"^\S+ \(TRUSTEDML_WORKER unset: the driver, or not a trustedml cluster worker\): ",
    ):
        pickle.loads(data).generate_data_key(key_id)  # noqa: S301 - bytes this test just made


# -- the wire: the optional `worker` label --------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("", "got ''"),
        ("w" * 129, "1-128 printable characters"),
        ("worker-1\n@host", "printable"),
        ("worker\x1b[31m", "printable"),
        (7, "got 'int'"),
    ],
)
def test_a_bad_worker_label_is_a_400(broker: Broker, label: object, expected: str) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    body = peer.attest_body(peer.challenge(), [key_id])
    body["worker"] = label
    response = peer.http.post("/v1/attest", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert "worker: expected 1-128 printable characters" in response.json()["message"]
    assert expected in response.json()["message"]


def test_the_label_is_optional_and_audited_when_given(broker: Broker) -> None:
    key_id = broker.new_key()
    peer = RawPeer(broker)
    body = peer.attest_body(peer.challenge(), [key_id])
    assert peer.http.post("/v1/attest", json=body).status_code == 200  # older clients
    label = "worker-7@198.18.3.11 (ünïcode ok)"
    assert broker.client(worker=label).attest([key_id])
    last, previous = attests(broker)[-1], attests(broker)[-2]
    assert last["details"]["worker"] == label
    assert "worker" not in previous["details"]


def test_the_client_checks_its_label() -> None:
    with pytest.raises(ConfigError, match="worker label"):
        KeyBrokerClient("https://127.0.0.1:1", provider=None, worker="a\nb")  # type: ignore[arg-type]
