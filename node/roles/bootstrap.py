"""Bootstrap supernode: an ordinary node that others dial first.

Every node serves peer exchange in the hello handshake; a bootstrap is simply the node whose
address is configured everywhere, so it learns (and hands out) the whole membership.
"""

from node.roles.base import Role


class BootstrapRole(Role):
    name = "bootstrap"
    capabilities = ("peer_exchange", "bootstrap_discovery")
