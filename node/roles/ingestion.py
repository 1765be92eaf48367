"""ingestion role: normalise, de-duplicate and route market events. Pipeline not wired yet: idle."""

from node.roles.base import Role


class IngestionRole(Role):
    name = "ingestion"
    capabilities = ("ingest_market_data", "store_market_events", "publish_events")
