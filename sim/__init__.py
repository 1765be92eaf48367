"""QuantIAN sim package."""
