"""ICE on a machine whose only network is loopback: offer 127.0.0.1 rather than nothing.

aioice gathers its host candidates from the machine's interfaces and leaves the loopback address
out, which is right on a networked server. On a machine with no other interface (an offline
laptop, a container or test namespace with only `lo`) that leaves no candidate at all, and every
call would fail ICE although the browser (or peer) runs on the same machine. So when aioice finds
no other address, the loopback one is offered; with any real interface nothing changes.
"""

from __future__ import annotations

import aioice.ice

_gather = aioice.ice.get_host_addresses


def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host addresses, or the loopback address when it finds none."""
    addresses = _gather(use_ipv4, use_ipv6)
    if addresses:
        return addresses
    return ["127.0.0.1"] if use_ipv4 else (["::1"] if use_ipv6 else [])


def offer_loopback_when_alone() -> None:
    """Make aioice use ``host_addresses`` (it looks the function up at each gathering)."""
    aioice.ice.get_host_addresses = host_addresses
