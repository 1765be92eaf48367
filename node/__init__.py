"""QuantIAN node package."""
