"""The images' ENTRYPOINT: Spark's ``driver ...`` or ``executor`` inside the pod's TEE.

Run as ``python -m trustedml.k8s.entrypoint`` by every trusted-ml Spark pod:

- ``driver --properties-file F --class C local:///APP [ARGS]``: measure the job from
  private copies and run ``spark-submit --deploy-mode client`` on them through the TEE
  backend (``TRUSTEDML_TEE``); the application's ``job_keystore()`` attests to the
  broker with that pod's evidence;
- ``executor``: Spark's executor JVM from the pod's ``SPARK_*`` variables, with the
  pod's evidence for the key agents that attest for its data keys;
- ``measure-executor``: print the executor measurement of this image, and
  ``measure-driver --properties-file RENDER/spark.properties --class C local:///APP
  [ARGS]``: the job measurement a driver pod of this image will take (for a broker
  policy, before the job runs);
- with ``TRUSTEDML_TEE=gramine`` the entrypoint first enters the image's signed enclave
  and does the above inside it.

Every fault is one line on stderr: exit 2 for what the pod was given (a missing
``SPARK_*`` variable, an unexpected argument), 1 for anything else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from trustedml.errors import ConfigError, TrustedMLError
from trustedml.k8s._pod_gramine import enclave_launch, in_enclave, pod_argv
from trustedml.k8s._pod_tee import (
    PodLaunch,
    driver_launch,
    driver_measurement,
    executor_launch,
    executor_measurement,
)
from trustedml.tee import ENV_TEE

__all__ = ["TINI", "exec_command", "launch", "main"]

TINI = "/usr/bin/tini"
_USAGE = "expected driver ARGS..., executor, measure-driver ARGS... or measure-executor"


def launch(argv: Sequence[str], env: Mapping[str, str]) -> PodLaunch:
    """The process this pod's entrypoint execs for ``argv`` (without the program name)."""
    if not argv:
        raise ConfigError(f"no command: {_USAGE}")
    if env.get(ENV_TEE) == "gramine" and not in_enclave():
        return enclave_launch(argv, env)
    mode, rest = argv[0], list(argv[1:])
    if mode == "driver":
        return driver_launch(rest, env)
    if mode == "executor":
        if rest:
            raise ConfigError(f"executor: unexpected arguments {rest!r} (Spark passes none)")
        return executor_launch(env)
    raise ConfigError(f"unknown command {mode!r}: {_USAGE}")


def exec_command(plan: PodLaunch, *, enclave: bool = False) -> list[str]:
    """The argv to exec: under tini (the pod's PID 1 reaps Spark's children, as in
    Spark's own image) when the image has it; inside an enclave as is (the tini outside
    already reaps gramine-sgx's children)."""
    argv = list(plan.argv)
    if enclave or not os.access(TINI, os.X_OK):
        return argv
    return [TINI, "-s", "--", *argv]


def _run(argv: Sequence[str]) -> int:
    env: Mapping[str, str] = os.environ
    enclave = env.get(ENV_TEE) == "gramine" and in_enclave()
    if list(argv[:1]) == ["measure-executor"]:
        print(executor_measurement().hex)
        return 0
    if list(argv[:1]) == ["measure-driver"]:
        print(driver_measurement(argv[1:], env).hex)
        return 0
    if enclave:
        # Inside the enclave, the role and arguments come in from the pod (see
        # _pod_gramine); the enclave's own argv is fixed by its manifest.
        argv = pod_argv(env)
    plan = launch(argv, env)
    if plan.banner:
        print(plan.banner, file=sys.stderr)
    for note in plan.notes:
        print(f"trustedml: {note}", file=sys.stderr)
    for check in plan.checks:
        check()
    command = exec_command(plan, enclave=enclave)
    sys.stdout.flush()
    sys.stderr.flush()
    if not os.access(command[0], os.X_OK):
        raise ConfigError(f"{command[0]}: not found in this image")
    # The pod's process becomes the command (its signals, its exit status), as in
    # Spark's own image; argv is a list, never a shell line.
    os.execve(command[0], command, dict(plan.env))  # noqa: S606


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pod's command; returns an exit code only when it could not start it."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"trustedml entrypoint: {exc}", file=sys.stderr)
        return 2
    except (TrustedMLError, OSError) as exc:
        print(f"trustedml entrypoint: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
