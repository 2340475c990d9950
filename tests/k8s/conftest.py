"""Shared pieces of the Kubernetes tests: an application, and renders of it per TEE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trustedml import KeyDirectory
from trustedml.k8s import KubernetesOptions, RenderedApp, render

MASTER = "k8s://https://198.18.0.1:6443"
BROKER = "https://198.18.0.2:8443"
PCCS = "https://198.18.0.3:8081"
APP_TEXT = (
    "from pyspark.sql import SparkSession\n"
    "print(SparkSession.builder.getOrCreate().range(10).count())\n"
)

Render = Callable[..., RenderedApp]


@pytest.fixture(scope="module")
def k8s_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = tmp_path_factory.mktemp("app") / "count_app.py"
    app.write_text(APP_TEXT)
    return app


def options_for(app: Path, tee: str, **extra: Any) -> KubernetesOptions:
    """The options a realistic job on ``tee`` has (a broker; the PCCS for gramine)."""
    given: dict[str, Any] = {
        "master": MASTER,
        "app": app,
        "tee": tee,
        "app_args": ("--rows", "10"),
        "image": "registry.example/trusted-ml:0.1.0",
        "namespace": "ml-jobs",
        "broker_url": BROKER,
    }
    if tee == "gramine":
        given["pccs_url"] = PCCS
    given.update(extra)
    return KubernetesOptions(**given)


@pytest.fixture(scope="module")
def render_for(
    session_keys: KeyDirectory, k8s_app: Path, tmp_path_factory: pytest.TempPathFactory
) -> Render:
    """``render_for(tee, **options)``: a render written into a fresh folder."""

    def make(tee: str, **extra: Any) -> RenderedApp:
        out = tmp_path_factory.mktemp(f"render-{tee}")
        rendered = render(options_for(k8s_app, tee, **extra), session_keys, out)
        rendered.write()
        return rendered

    return make
