"""QuantIAN testnet package."""
