"""Pure analytics of QuantIAN: no network, no clocks, no I/O.

* :mod:`node.analytics.detector` — ``DetectorConfig``, ``DEFAULT_THRESHOLD``,
  ``StreamingDetector`` (univariate), ``MarketDetector`` (price + volume per
  symbol, returns ``Score`` records), ``severity``, ``AlertGate``.
* :mod:`node.analytics.risk` — returns, volatility, historical VaR / ES,
  drawdown, fixed-weight portfolios, bar resampling, ``snapshot``.
* building blocks: ``ewstats`` (chunk-invariant EW moments), ``features``,
  ``calibrate`` (tail probabilities, Fisher / Bonferroni), ``forest``
  (scheduled IsolationForest).

Submodules are imported explicitly (``from node.analytics import risk``) so
the risk role does not pay for importing scikit-learn.
"""
