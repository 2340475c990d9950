"""The `trustedml` command line: parses, calls the library, maps errors to exit codes."""

from __future__ import annotations

import click

from trustedml import __version__
from trustedml.cli._common import Group
from trustedml.cli.attest import attest_group
from trustedml.cli.broker import broker_group
from trustedml.cli.cluster import cluster_group
from trustedml.cli.data import decrypt_command, encrypt_command
from trustedml.cli.doctor import doctor_command
from trustedml.cli.jobs import run_command, submit_command
from trustedml.cli.k8s import k8s_group
from trustedml.cli.keys import keys_group
from trustedml.cli.measure import measure_command
from trustedml.cli.ml import example_command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trustedml")
def cli() -> None:
    """trusted-ml: confidential PySpark analytics and ML in trusted execution environments."""


cli.add_command(keys_group)
cli.add_command(submit_command)
cli.add_command(run_command)
cli.add_command(encrypt_command)
cli.add_command(decrypt_command)
cli.add_command(example_command)
cli.add_command(attest_group)
cli.add_command(measure_command)
cli.add_command(broker_group)
cli.add_command(doctor_command)
cli.add_command(cluster_group)
cli.add_command(k8s_group)


def main() -> None:
    cli(prog_name="trustedml")
