"""anomaly role: score per-symbol batches and raise alerts. Pipeline not wired yet: idle."""

from node.roles.base import Role


class AnomalyRole(Role):
    name = "anomaly"
    capabilities = ("detect_anomalies", "submit_review_feedback")
