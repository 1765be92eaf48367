"""QuantIAN bootstrap package."""
