"""``minigrid console``: a one-time sign-in link to a node's live web console.

The link is a SigV4-presigned ``GET /minigrid/console/login`` made with the admin keys (see
:mod:`node.console.sessions`): it works once, for ``--expires`` seconds, and only for the run of
the node it was made for, so the command first asks the node (admin ``info``) which run that is.
``cluster up`` prints one for node 0 (:func:`console_link`).
"""

from __future__ import annotations

import click

from cli.admin import fetch_info
from cli.target import Target, fail, resolve_target, tls_ca_option
from node.console.sessions import MAX_LINK_SECONDS, login_link

LINK_SECONDS = 900


def console_link(url: str, access_key: str, secret_key: str, region: str,
                 ca: str | None = None, expires: int = LINK_SECONDS) -> str:  # fmt: skip
    """A one-time sign-in link to the console of the node at ``url``; ValueError (with the
    reason) when the node does not answer."""
    info = fetch_info(url, access_key, secret_key, region, ca=ca)
    if isinstance(info, str):
        raise ValueError(f"{url} did not answer: {info}")
    instance = str(info.get("node", {}).get("grid_instance", ""))
    if not instance:
        raise ValueError(f"{url} did not say which run it is (no grid_instance in its info)")
    return login_link(url, instance, access_key, secret_key, region, expires)


@click.command()
@click.option("--node", "index", type=int, default=0, show_default=True,
              help="the node whose console to open (an index into the cluster's nodes)")
@click.option("--expires", type=click.IntRange(1, MAX_LINK_SECONDS), default=LINK_SECONDS,
              show_default=True, help="seconds the link stays good (it works once)")
@click.option("--data-dir", default=None, metavar="DIR",
              help="the cluster's directory [env MINIGRID_DATA_DIR; ./.minigrid]")
@click.option("--endpoint", default=None, metavar="URL", help="a node's URL instead")
@click.option("--access-key", default=None, help="admin access key [env MINIGRID_ADMIN_ACCESS_KEY]")
@click.option("--secret-key", default=None, help="admin secret key [env MINIGRID_ADMIN_SECRET_KEY]")
@tls_ca_option
def console(index: int, expires: int, data_dir: str | None, endpoint: str | None,
            access_key: str | None, secret_key: str | None,
            tls_ca: str | None) -> None:  # fmt: skip
    """Print a one-time sign-in link to a node's live web console (/minigrid/console)."""
    target: Target = resolve_target(data_dir, endpoint, access_key, secret_key, admin=True,
                                    ca=tls_ca)  # fmt: skip
    if not 0 <= index < len(target.endpoints):
        fail(f"--node must be 0-{len(target.endpoints) - 1}, not {index}", 2)
    try:
        link = console_link(target.endpoints[index], target.access_key, target.secret_key,
                            target.region, target.ca, expires)  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    click.echo(link)


__all__ = ["LINK_SECONDS", "console", "console_link"]
