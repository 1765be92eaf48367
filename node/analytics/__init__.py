"""QuantIAN node/analytics package."""
