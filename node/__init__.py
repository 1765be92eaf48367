"""QuantIAN peer node: host, identity, config, peer table, protocols and roles."""

__version__ = "0.1.0"
