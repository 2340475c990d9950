"""An in-process SparkSession started with a trusted-ml Spark configuration."""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from trustedml.errors import ConfigError
from trustedml.spark._config import SparkSettings
from trustedml.spark._submit import _check_java, child_environment, write_conf_dir

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def start_session(settings: SparkSettings, app_name: str = "trustedml") -> SparkSession:
    """Start a SparkSession in this process under ``settings`` (notebooks, tests).

    Secrets are placed in this process's environment only while the Spark JVM is
    launched, then removed again.
    """
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is not None:
        raise ConfigError("a Spark session is already running in this process; stop it first")
    confs = Path(tempfile.mkdtemp(prefix="trustedml-session-"))
    atexit.register(shutil.rmtree, confs, True)
    props = write_conf_dir(settings, confs)
    env = child_environment(settings)
    _check_java(env)
    env["SPARK_CONF_DIR"] = str(confs)
    env["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {shlex.quote(str(props))} pyspark-shell"
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return SparkSession.builder.appName(app_name).getOrCreate()
    finally:
        os.environ.clear()
        os.environ.update(saved)
