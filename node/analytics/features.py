"""Causal multi-scale deviation features of one numeric stream.

Why these: anomalies in a stream show up at different time scales (a one-row
spike, a shift of the level over tens of rows, a change of the noise level —
including a flatline, where the noise vanishes).  Each feature is a signed,
scale-free deviation of row t from the stream's own exponentially weighted
past (rows < t), so one threshold can serve series of any unit.

Features (in ``FeatureBank.names`` order):

* ``level@s`` for each scale s: ``(EWmean_s(x)_t - mean_L_{t-1}) / std_L_{t-1}``,
  the short-horizon level against the long-horizon distribution (s = 1 is
  the row itself);
* ``jump``: ``(x_t - x_{t-1}) / rms_L(dx)_{t-1}``, a step against the usual
  step size;
* ``noise``: ``0.5 ln(EW_v(dx^2)_t / EW_L(dx^2)_{t-1})``, the recent step
  energy against the long-run one (positive = turbulent, negative = frozen).
"""

from __future__ import annotations

import numpy as np

from .ewstats import EWMean, EWMoments, lagged, nan_to_zero

#: Floor on variances, relative to the stream's scale, so a constant stream
#: gives finite (and then huge) deviations instead of 0/0.
_REL_FLOOR = 1e-6
_ABS_FLOOR = 1e-12
#: Deviations are clipped here: beyond it every row is equally "off the
#: scale", and one start-up or outage value must not dominate later history.
CLIP = 50.0


class FeatureBank:
    """Streaming feature extractor with O(len(scales)) state."""

    def __init__(self, scales: tuple[int, ...], long_span: int, noise_span: int) -> None:
        self.scales = scales
        self.names = tuple(f"level@{s}" for s in scales) + ("jump", "noise")
        self._long = EWMoments(2.0 / (long_span + 1))
        self._short = [EWMean(2.0 / (s + 1)) for s in scales]
        self._step_long = EWMean(2.0 / (long_span + 1))
        self._step_short = EWMean(2.0 / (noise_span + 1))
        self._last_x = float("nan")
        self._last_step_long = float("nan")
        self._last_scale = float("nan")
        self._scale = EWMean(2.0 / (long_span + 1))  # mean |x| for the floors

    def update(self, x: np.ndarray) -> np.ndarray:
        """Features of each row of ``x``: shape ``(len(x), len(names))``; for ``x`` of shape
        ``(n, c)`` (c aligned channels, one call for all) ``(n, c * len(names))``, channel by
        channel, each exactly what a bank of its own would give."""
        x = np.asarray(x, dtype=float)
        mean, var = self._long.update(x)
        level = self._scale.update(np.abs(x))
        scale = lagged(level, self._last_scale)
        floor = np.maximum(_REL_FLOOR * nan_to_zero(scale), _ABS_FLOOR) ** 2
        std = np.sqrt(np.maximum(nan_to_zero(var), floor))
        prev_x = lagged(x, self._last_x)
        step = np.where(np.isnan(prev_x), 0.0, x - prev_x)
        energy_long = self._step_long.update(step * step)
        prior_energy = np.maximum(nan_to_zero(lagged(energy_long, self._last_step_long)), floor)
        energy_short = np.maximum(self._step_short.update(step * step), floor)
        cols = [(m.update(x) - nan_to_zero(mean)) / std for m in self._short]
        cols.append(step / np.sqrt(prior_energy))
        cols.append(0.5 * np.log(energy_short / prior_energy))
        if len(x):
            self._last_x = x[-1].copy()
            self._last_step_long = energy_long[-1].copy()
            self._last_scale = level[-1].copy()
        out = np.stack(cols, axis=-1).reshape(len(x), -1)  # (n, [c,] features) -> channel-major
        out[np.isnan(out)] = 0.0
        return np.clip(out, -CLIP, CLIP)


class LagWindow:
    """Rows t, t-1, ..., t-k+1 of one column side by side (zeros before the start).

    Why: a shape anomaly (a pattern broken, a cycle out of step) is invisible to
    any one-row feature; the forest and the recurrence check judge the last k
    rows together.  The last k-1 rows are kept, so chunked input gives the same
    windows as one batch.
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self._tail = np.zeros(k - 1)

    def update(self, col: np.ndarray) -> np.ndarray:
        """Shape ``(len(col), k)``; column j is the value j rows earlier."""
        if not len(col):
            return np.zeros((0, self.k))
        n, k = len(col), self.k
        ext = np.concatenate((self._tail, col))
        self._tail = ext[len(ext) - (k - 1):]
        out = np.empty((n, k))  # one slice per lag: cheaper than sliding_window_view's checks
        for j in range(k):
            out[:, j] = ext[k - 1 - j:k - 1 - j + n]
        return out
