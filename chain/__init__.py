"""QuantIAN chain package."""
