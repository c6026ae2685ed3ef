"""``python -m msgtrans publish --redis URL [--group G] DATA``: an operator's way to send one
one-way message to every session of a whole cluster (or to one group's members), through the
Redis backplane the ``serve --redis URL`` nodes share.

The command is a node of its own for one message: it publishes one envelope from a fresh node
id, so every server node delivers it to its sessions (none ignores it as its own).  Redis
pub/sub delivers to the nodes subscribed at that moment; the command prints how many nodes
Redis handed it to (``PUBLISH``'s answer: one per subscribed node, for ``--group`` only the
nodes with a member of the group).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .._driver.backplane import BACKPLANE_TIMEOUT, check_redis_url, client_options, redis_module
from ..core.backplane import BackplaneNode, Envelope, TargetKind
from ..core.errors import ConfigurationError, TransportConnectionError, TransportError
from ..core.groups import check_group

__all__ = ["add_arguments", "main", "publish"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``publish``'s arguments to *parser*."""
    parser.add_argument("data", metavar="DATA", help="the payload (sent as UTF-8)")
    parser.add_argument("--redis", required=True, metavar="URL",
                        help="the backplane's Redis (redis://HOST:PORT/DB, rediss://, unix://)")
    parser.add_argument("--group", metavar="G",
                        help="only the sessions that joined group G (default: every session)")
    parser.add_argument("--biz-type", type=int, default=0, metavar="N",
                        help="the message's biz_type, 0..255 (default 0)")
    parser.add_argument("--prefix", default="msgtrans",
                        help="the backplane's channel prefix (default msgtrans, as serve's)")
    parser.add_argument("--timeout", type=float, default=BACKPLANE_TIMEOUT, metavar="S",
                        help=f"seconds to reach Redis (default {BACKPLANE_TIMEOUT:g})")


def publish(url: str, data: bytes, *, group: str | None = None, biz_type: int = 0,
            prefix: str = "msgtrans", timeout: float = BACKPLANE_TIMEOUT) -> int:
    """Publish one one-way message for every session of the cluster behind *url* (or the
    members of *group*); return how many nodes Redis delivered it to.

    Raises:
        ConfigurationError: a bad URL, group, biz_type or prefix (``field`` names it), or
            redis-py is missing.
        TransportConnectionError: Redis could not be reached or refused the command.
    """
    check_redis_url(url)
    if group is not None:
        check_group(group)
    node = BackplaneNode(prefix=prefix)
    kind = TargetKind.ALL if group is None else TargetKind.GROUP
    envelope = Envelope(node.node_id, kind, group or "", biz_type, data)
    raw = envelope.encode()
    channel = node.all_channel if group is None else node.group_channel(group)
    redis = redis_module()
    client = redis.Redis.from_url(url, **client_options(timeout))
    try:
        return int(client.publish(channel, raw))
    except redis.RedisError as exc:
        raise TransportConnectionError(f"publishing to {url} failed: {exc}",
                                       code="connection.failed") from None
    finally:
        client.close()


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
         ) -> int:
    """Run ``publish`` with parsed *args*; print the node count on *out* (default stdout),
    errors on *err* (default stderr); exit status 0, 1 on a transport failure, 2 on a bad
    argument."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        nodes = publish(args.redis, args.data.encode("utf-8"), group=args.group,
                        biz_type=args.biz_type, prefix=args.prefix, timeout=args.timeout)
    except ConfigurationError as exc:
        print(f"msgtrans publish: {exc}", file=err)
        return 2
    except TransportError as exc:
        print(f"msgtrans publish: {exc}", file=err)
        return 1
    target = "every session" if args.group is None else f"group {args.group!r}"
    print(f"published to {target} on {nodes} node(s)", file=out)
    return 0
