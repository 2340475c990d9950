"""Which user ``--conf`` keys a secure Spark job accepts, and why every other is refused."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ALLOWED_KEYS", "ALLOWED_PREFIXES", "UNKNOWN", "ConfRefusal", "conf_refusal"]

# Keys that only tune resources, parallelism or query planning: none of them changes
# who can talk to the job, what crosses a wire or a disk in plaintext, or what code runs.
ALLOWED_KEYS = frozenset(
    {
        "spark.app.name",
        # resources
        "spark.driver.memory",
        "spark.driver.cores",
        "spark.driver.maxResultSize",
        "spark.driver.memoryOverhead",
        "spark.driver.memoryOverheadFactor",
        "spark.executor.memory",
        "spark.executor.cores",
        "spark.executor.instances",
        "spark.executor.memoryOverhead",
        "spark.executor.memoryOverheadFactor",
        "spark.executor.pyspark.memory",
        "spark.cores.max",
        "spark.task.cpus",
        "spark.memory.fraction",
        "spark.memory.storageFraction",
        "spark.memory.offHeap.enabled",
        "spark.memory.offHeap.size",
        "spark.python.worker.memory",
        "spark.python.worker.reuse",
        # parallelism and scheduling
        "spark.default.parallelism",
        "spark.task.maxFailures",
        "spark.scheduler.mode",
        "spark.locality.wait",
        "spark.speculation",
        "spark.network.timeout",
        "spark.executor.heartbeatInterval",
        "spark.rpc.askTimeout",
        "spark.rpc.message.maxSize",
        # buffers and compression (compression happens before encryption)
        "spark.kryoserializer.buffer",
        "spark.kryoserializer.buffer.max",
        "spark.shuffle.file.buffer",
        "spark.reducer.maxSizeInFlight",
        "spark.shuffle.compress",
        "spark.shuffle.spill.compress",
        "spark.rdd.compress",
        "spark.broadcast.compress",
        "spark.broadcast.blockSize",
        "spark.io.compression.codec",
        "spark.io.compression.zstd.level",
        "spark.io.compression.lz4.blockSize",
        "spark.files.maxPartitionBytes",
        # Spark SQL tuning
        "spark.sql.shuffle.partitions",
        "spark.sql.autoBroadcastJoinThreshold",
        "spark.sql.broadcastTimeout",
        "spark.sql.files.maxPartitionBytes",
        "spark.sql.files.openCostInBytes",
        "spark.sql.files.maxRecordsPerFile",
        "spark.sql.session.timeZone",
        "spark.sql.ansi.enabled",
        "spark.sql.caseSensitive",
        "spark.sql.execution.arrow.pyspark.enabled",
        "spark.sql.execution.arrow.pyspark.fallback.enabled",
        "spark.sql.execution.arrow.maxRecordsPerBatch",
        "spark.sql.execution.pythonUDF.arrow.enabled",
        "spark.sql.parquet.compression.codec",
        "spark.sql.parquet.filterPushdown",
        "spark.sql.parquet.mergeSchema",
        "spark.sql.inMemoryColumnarStorage.compressed",
        "spark.sql.inMemoryColumnarStorage.batchSize",
        "spark.sql.join.preferSortMergeJoin",
        "spark.sql.sources.partitionOverwriteMode",
        "spark.sql.codegen.wholeStage",
        "spark.sql.cbo.enabled",
        "spark.sql.cbo.joinReorder.enabled",
        # Where the job's own managed tables go: a path the job could write to anyway.
        "spark.sql.warehouse.dir",
    }
)
# Adaptive query execution: every key tunes planning, except those that name a class.
ALLOWED_PREFIXES = ("spark.sql.adaptive.",)
# A key ending like this names code to load (a class, listener, plugin...), even under
# an allowed prefix.
_LOADS_CODE = re.compile(
    r"(?i).*(class|classes|classname|listeners?|plugins?|extensions?|registrators?)$"
)


@dataclass(frozen=True)
class ConfRefusal:
    """Why a key is refused: its ``category``, the ``reason`` and what to do instead."""

    category: str
    reason: str
    alternative: str


_TLS_UI = ConfRefusal(
    "TLS/UI",
    "the web UI and the standalone daemons are always served over TLS with the key "
    "directory's certificate, with the UI unable to kill jobs",
    "--no-ui turns the UI off; use --insecure for a plain development job",
)
_AUTH = ConfRefusal(
    "authentication",
    "every RPC peer must prove it knows the job's secret",
    "authentication is always on; use --insecure for a plain development job",
)
_CRYPTO = ConfRefusal(
    "crypto",
    "RPC (AES-GCM), shuffle and spill files (AES-256) and Python worker sockets are "
    "always encrypted or kept off the network",
    "--rpc-tls chooses TLS for RPC; Parquet encryption comes from --kek",
)
_NETWORK = ConfRefusal(
    "network bind/host",
    "the driver binds to 127.0.0.1 and Spark picks free ports itself; an address or "
    "port could expose the job on other interfaces",
    "fixed addresses and ports are not configurable in a secure job yet",
)
_INTERPRETER = ConfRefusal(
    "interpreter/environment injection",
    "it would run another interpreter or module, or inject environment variables into executors",
    "ship code with --py-files or install it into the job's venv (the interpreter trusted-ml runs)",
)
_JVM = ConfRefusal(
    "JVM options",
    "JVM options, class paths and library paths change what the JVM runs and trusts",
    "the JVM is started by trusted-ml's configuration only",
)
_CODE = ConfRefusal(
    "code loading",
    "it loads extra code (jars, files, classes, listeners, plugins, scripts) into the job",
    "ship Python code with --py-files or the job's venv; extra JVM code is not "
    "supported in a secure job",
)
_LOGS = ConfRefusal(
    "logs/redaction",
    "event logs would hold the job's plans and settings in plaintext outside the "
    "protections, and redaction hides secret values from UIs and logs",
    "--log-level sets the log level; redaction and event logs are fixed",
)
_CLUSTER = ConfRefusal(
    "cluster manager",
    "it changes where and how the job is deployed, or configures cluster daemons",
    "--master chooses local[N], spark://HOST:PORT or (submit) k8s://, whose settings trusted-ml "
    "renders itself (trustedml k8s render options); YARN is not supported",
)
_STORAGE = ConfRefusal(
    "Hadoop/Parquet",
    "Hadoop and Parquet settings can turn off Parquet encryption or redirect file "
    "systems and their credentials",
    "Parquet encryption comes from --kek; give data source options in the job",
)
UNKNOWN = ConfRefusal(
    "unknown key",
    "it is not on the allow-list of keys that cannot weaken a secure job (docs/spark-security.md)",
    "ask for it to be added if it only tunes the job",
)

# First match wins; every pattern matches the whole key.
_RULES: tuple[tuple[re.Pattern[str], ConfRefusal], ...] = tuple(
    (re.compile(pattern), why)
    for pattern, why in (
        (r"spark\.ssl\..*", _TLS_UI),
        (r"spark\.ui\..*", _TLS_UI),
        (r"spark\.history\..*", _TLS_UI),
        (r"spark\.authenticate.*", _AUTH),
        (r"spark\.network\.crypto\..*", _CRYPTO),
        (r"spark\.io\.encryption\..*", _CRYPTO),
        (r"spark\.python\.unix\.domain\.socket\..*", _CRYPTO),
        (r"spark\.(.+\.)?bindAddress", _NETWORK),
        (r"spark\.driver\.host", _NETWORK),
        (r"spark\.(.+\.)?ports?", _NETWORK),
        (r"spark\.port\..*", _NETWORK),
        (r"spark\.pyspark\..*", _INTERPRETER),
        (r"spark\.executorEnv\..*", _INTERPRETER),
        (r"spark\.python\..*", _INTERPRETER),
        (r"spark\.(r|sparkr)\..*", _INTERPRETER),
        (r"spark\..*(extra|default)JavaOptions", _JVM),
        (r"spark\..*extra(Class|Library)Path", _JVM),
        (r"spark\..*userClassPathFirst", _JVM),
        (r"spark\.jars(\..*)?", _CODE),
        (r"spark\.(files|archives)", _CODE),
        (r"spark\.submit\..*", _CODE),
        (r"spark\.serializer(\..*)?", _CODE),
        (r"spark\.kryo\..*", _CODE),
        (r"spark\.sql\.(catalog|hive|artifact)\..*", _CODE),
        (r"spark\.sql\.catalog", _CODE),
        (r"spark\.connect\..*", _CODE),
        (r"spark\..*\.resource\..*", _CODE),
        (r"spark\.redaction\..*", _LOGS),
        (r"spark\.sql\.redaction\..*", _LOGS),
        (r"spark\.eventLog\..*", _LOGS),
        (r"spark\.log\..*", _LOGS),
        (r"spark\.logConf", _LOGS),
        (r"spark\.master(\..*)?", _CLUSTER),
        (r"spark\.(worker|deploy|standalone|kubernetes|yarn|mesos)\..*", _CLUSTER),
        (r"spark\.shuffle\.service\..*", _CLUSTER),
        (r"spark\.hadoop\..*", _STORAGE),
        (r"spark\.hive\..*", _STORAGE),
        (r"parquet\..*", _STORAGE),
    )
)


def conf_refusal(key: str) -> ConfRefusal | None:
    """None when ``key`` is on the allow-list, else why a secure job refuses it."""
    if _LOADS_CODE.fullmatch(key):
        return _CODE
    if key in ALLOWED_KEYS or key.startswith(ALLOWED_PREFIXES):
        return None
    for pattern, why in _RULES:
        if pattern.fullmatch(key):
            return why
    return UNKNOWN
