"""QuantIAN node/roles package."""
