"""Pure risk math for one price series or a fixed-weight portfolio.

No I/O, no clocks, numpy only: the risk role and the shell call these on
in-memory arrays, the tests check them against ``shared/risk/golden.json``.

Conventions (the ones ``golden.json`` states; change them only together):

* Returns are *simple*, ``r_t = P_t / P_{t-1} - 1``, unless a function says
  ``log`` (``ln(P_t / P_{t-1})``).  Rows are bars, not calendar days.
* Annualised volatility is the sample standard deviation (``ddof=1``) of the
  per-bar returns times ``sqrt(periods_per_year)``; 252 for daily bars.  For
  other bar sizes use :func:`periods_per_year` so that per-tick returns are
  never scaled by ``sqrt(252)`` (the original's bug).
* Historical VaR at level ``c`` is a POSITIVE loss fraction,
  ``-quantile(r, 1 - c)`` with numpy's ``linear`` method (Hyndman-Fan type 7,
  the pandas default).
* Expected shortfall at level ``c`` is ``-mean(r[r <= quantile(r, 1 - c)])``
  (non-strict ``<=``), also a positive loss fraction.
* Max drawdown is ``min_t(P_t / max_{s<=t} P_s - 1)``, a NEGATIVE fraction (0
  when the path never falls), with the index of the peak (first time the
  running maximum reached its value) and of the trough.
* Portfolios are fixed-weight, rebalanced every bar:
  ``r_p,t = sum_i w_i r_i,t`` over aligned return series.  Weights must name
  known symbols, be finite and >= 0 (long-only) and sum to 1 within
  ``WEIGHT_SUM_TOL``; anything else raises :class:`InvalidWeights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

TRADING_DAYS_PER_YEAR = 252
#: One regular US equity session (09:30-16:00) in seconds.
SESSION_SECONDS = 6.5 * 3600
#: How far a weight vector may be from summing to exactly 1.
WEIGHT_SUM_TOL = 1e-9
QUANTILE_METHOD = "linear"


class RiskError(ValueError):
    """Root of the risk errors; ``code`` is stable for logs and the shell."""

    code = "risk_error"


class InsufficientData(RiskError):
    """Too few prices or returns for the requested metric."""

    code = "insufficient_data"


class InvalidPrices(RiskError):
    """Prices that are not finite and strictly positive."""

    code = "invalid_prices"


class InvalidWeights(RiskError):
    """Portfolio weights that are unknown, negative, NaN or not summing to 1."""

    code = "invalid_weights"


class MisalignedSeries(RiskError):
    """Return series of different lengths passed as one aligned portfolio."""

    code = "misaligned_series"


def _prices(prices: np.ndarray | list[float], need: int = 2) -> np.ndarray:
    p = np.asarray(prices, dtype=float)
    if p.ndim != 1 or len(p) < need:
        raise InsufficientData(f"need at least {need} prices, got {p.size}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise InvalidPrices("prices must be finite and > 0")
    return p


def _returns(returns: np.ndarray | list[float], need: int = 1) -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1 or len(r) < need:
        raise InsufficientData(f"need at least {need} returns, got {r.size}")
    return r


def simple_returns(prices: np.ndarray | list[float]) -> np.ndarray:
    """``P_t / P_{t-1} - 1`` for each consecutive pair of prices."""
    p = _prices(prices)
    return p[1:] / p[:-1] - 1.0


def log_returns(prices: np.ndarray | list[float]) -> np.ndarray:
    """``ln(P_t / P_{t-1})``; additive over time, used by the detector."""
    p = _prices(prices)
    return np.log(p[1:] / p[:-1])


def periods_per_year(
    bar_seconds: float,
    *,
    session_seconds: float = SESSION_SECONDS,
    sessions_per_year: float = TRADING_DAYS_PER_YEAR,
) -> float:
    """Bars per year for bars of ``bar_seconds`` of trading time.

    A daily bar is one session (``bar_seconds == session_seconds`` gives 252);
    a 1-minute bar in a 6.5 h session gives 252 * 390.  For a market that
    trades around the clock pass ``session_seconds=86400,
    sessions_per_year=365``.
    """
    if not (bar_seconds > 0 and session_seconds > 0 and sessions_per_year > 0):
        raise RiskError("bar_seconds, session_seconds, sessions_per_year must be > 0")
    return sessions_per_year * session_seconds / bar_seconds


def bar_closes(
    timestamps: np.ndarray | list[float],
    prices: np.ndarray | list[float],
    bar_seconds: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a tick stream into bar closes.

    Bar ``k`` covers ``[k * bar_seconds, (k + 1) * bar_seconds)`` of the
    timestamp axis (seconds); its close is the last tick inside it.  Returns
    ``(bar_start_times, closes)`` for the bars that hold at least one tick, so
    a quiet bar is skipped rather than forward-filled (a gap is not a
    zero return).  Timestamps must be non-decreasing.
    """
    t = np.asarray(timestamps, dtype=float)
    p = np.asarray(prices, dtype=float)
    if t.shape != p.shape or t.ndim != 1:
        raise MisalignedSeries("timestamps and prices must be 1-d and equally long")
    if bar_seconds <= 0:
        raise RiskError("bar_seconds must be > 0")
    if len(t) == 0:
        return np.empty(0), np.empty(0)
    if np.any(np.diff(t) < 0):
        raise RiskError("timestamps must be non-decreasing")
    bars = np.floor(t / bar_seconds).astype(np.int64)
    last_of_bar = np.r_[np.nonzero(np.diff(bars))[0], len(bars) - 1]
    return bars[last_of_bar] * float(bar_seconds), p[last_of_bar]


def annualised_volatility(
    returns: np.ndarray | list[float],
    periods: float = TRADING_DAYS_PER_YEAR,
    *,
    ddof: int = 1,
) -> float:
    """Sample std of per-bar returns times ``sqrt(periods)`` (bars per year)."""
    r = _returns(returns, need=ddof + 1)
    return float(np.std(r, ddof=ddof) * math.sqrt(periods))


def _level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise RiskError(f"confidence level must be in (0, 1), got {level}")
    return level


def historical_var(
    returns: np.ndarray | list[float],
    level: float = 0.95,
    *,
    method: str = QUANTILE_METHOD,
) -> float:
    """One-bar historical VaR as a positive loss fraction: ``-q_{1-level}``."""
    r = _returns(returns)
    return float(-np.quantile(r, 1.0 - _level(level), method=method))


def expected_shortfall(
    returns: np.ndarray | list[float],
    level: float = 0.975,
    *,
    method: str = QUANTILE_METHOD,
) -> float:
    """Mean loss at or beyond the VaR quantile, as a positive fraction."""
    r = _returns(returns)
    q = np.quantile(r, 1.0 - _level(level), method=method)
    return float(-np.mean(r[r <= q]))


@dataclass(frozen=True)
class Drawdown:
    """Worst peak-to-trough fall of a price path (``value`` <= 0)."""

    value: float
    peak_index: int
    trough_index: int


def max_drawdown(prices: np.ndarray | list[float]) -> Drawdown:
    """Largest relative fall from a running peak, with where it happened."""
    p = _prices(prices, need=1)
    peak = np.maximum.accumulate(p)
    dd = p / peak - 1.0
    trough = int(np.argmin(dd))
    if dd[trough] == 0.0:
        return Drawdown(0.0, trough, trough)
    # first index at which the running peak took the value it has at the trough
    peak_idx = int(np.argmax(p[: trough + 1] == peak[trough]))
    return Drawdown(float(dd[trough]), peak_idx, trough)


def rolling_returns(prices: np.ndarray | list[float], k: int = 1, *, log: bool = False) -> np.ndarray:
    """``P_t / P_{t-k} - 1`` (or its log) for every ``t >= k``, in rows."""
    if k < 1:
        raise RiskError("k must be >= 1")
    p = _prices(prices, need=k + 1)
    ratio = p[k:] / p[:-k]
    return np.log(ratio) if log else ratio - 1.0


def period_return(prices: np.ndarray | list[float], k: int = 1, *, log: bool = False) -> float:
    """Return over the last ``k`` rows: ``P_T / P_{T-k} - 1`` (or its log)."""
    return float(rolling_returns(np.asarray(prices, dtype=float)[-(k + 1):], k, log=log)[-1])


def validate_weights(weights: Mapping[str, float], symbols: set[str] | frozenset[str]) -> dict[str, float]:
    """Check a long-only, fully invested weight vector; return it as floats."""
    if not weights:
        raise InvalidWeights("no weights given")
    unknown = sorted(set(weights) - set(symbols))
    if unknown:
        raise InvalidWeights(f"unknown symbols: {', '.join(unknown)}")
    w = {s: float(v) for s, v in weights.items()}
    bad = sorted(s for s, v in w.items() if not math.isfinite(v) or v < 0)
    if bad:
        raise InvalidWeights(f"weights must be finite and >= 0: {', '.join(bad)}")
    total = math.fsum(w.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise InvalidWeights(f"weights sum to {total!r}, not 1")
    return w


def portfolio_returns(weights: Mapping[str, float], returns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-bar returns of a fixed-weight portfolio over aligned series.

    ``returns`` maps each symbol to its simple returns on the same bars
    (align them first, e.g. with :func:`bar_closes`).  Symbols absent from
    ``weights`` get weight 0.
    """
    w = validate_weights(weights, frozenset(returns))
    lengths = {len(np.asarray(returns[s])) for s in w}
    if len(lengths) != 1:
        raise MisalignedSeries(f"return series lengths differ: {sorted(lengths)}")
    out = np.zeros(lengths.pop())
    for sym in sorted(w):
        out = out + w[sym] * np.asarray(returns[sym], dtype=float)
    return out


def portfolio_prices(weights: Mapping[str, float], prices: Mapping[str, np.ndarray]) -> np.ndarray:
    """Value path (starting at 1) of the fixed-weight portfolio on aligned prices."""
    rets = {s: simple_returns(p) for s, p in prices.items()}
    r = portfolio_returns(weights, rets)
    return np.r_[1.0, np.cumprod(1.0 + r)]


def snapshot(
    prices: np.ndarray | list[float],
    *,
    periods: float = TRADING_DAYS_PER_YEAR,
    horizon: int = 20,
) -> dict[str, float | int]:
    """JSON-able risk summary of one price path (the risk role's record)."""
    p = _prices(prices, need=3)
    r = simple_returns(p)
    dd = max_drawdown(p)
    out: dict[str, float | int] = {
        "n_prices": int(len(p)),
        "ann_vol": annualised_volatility(r, periods),
        "var95": historical_var(r, 0.95),
        "var99": historical_var(r, 0.99),
        "es975": expected_shortfall(r, 0.975),
        "max_drawdown": dd.value,
        "max_drawdown_peak_index": dd.peak_index,
        "max_drawdown_trough_index": dd.trough_index,
        "return_1": period_return(p, 1),
    }
    if len(p) > horizon:
        out[f"return_{horizon}"] = period_return(p, horizon)
    return out
