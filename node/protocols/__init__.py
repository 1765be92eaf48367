"""QuantIAN node/protocols package."""
