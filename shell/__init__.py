"""QuantIAN shell package."""
