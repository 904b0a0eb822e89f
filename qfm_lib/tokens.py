"""Token maps of a set of images (`TokenSet`): the cached cells of every image in one table, each image's
grid, and the per-channel normalisation fitted on training images; windows of cells read from it.

Its own module because two caches depend on its layout: the decoder's training reads windows from it,
and the learned tail's input (tail.tail_tokens) is written in its row order. So an edit here moves the
tail input's key, and an edit of the decoder does not.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch


_BUFFER: dict = {}


def _table_buffer(owner: "TokenSet", shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The process's one normalised-token table, reused from fit to fit (allocating and faulting in a
    fresh 1.1 GB table took 1-4 s per fit, refilling it 0.7 s). The TokenSet that held it before
    loses it (its windows are then read from the tokens directly until it keeps a table again)."""
    buf, holder = _BUFFER.get("table", (None, None))
    holder = holder() if holder is not None else None
    if holder is not None and holder is not owner:
        holder._table, holder._table_stats = None, None
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        _BUFFER.pop("table", None)
        buf = None  # free the old buffer before allocating the new one
        buf = torch.empty(shape, dtype=dtype)
    _BUFFER["table"] = (buf, weakref.ref(owner))
    return buf


def window_average(maps: np.ndarray, tops: np.ndarray, lefts: np.ndarray, window: int) -> np.ndarray:
    """(B, H, W, ...) maps and (B, K) window positions -> (B, K, ...) mean of each window's cells,
    from one integral image per map."""
    pad = ((0, 0), (1, 0), (1, 0)) + ((0, 0),) * (maps.ndim - 3)
    csum = np.pad(maps.cumsum(1).cumsum(2), pad)
    b = np.arange(len(maps))[:, None]
    bottom, right = tops + window, lefts + window
    total = csum[b, bottom, right] - csum[b, tops, right] - csum[b, bottom, lefts] + csum[b, tops, lefts]
    return total / window ** 2


class TokenSet:
    """Token maps of a set of images, and per-channel normalisation from given (training) rows.

    tokens: (total cells, C), every image's cells row-major, image after image (fp16, memory-mapped
    is fine); grid: (N, 2) each image's rows and columns; backbone: the timm name of the backbone that
    wrote them (needed by a decoder with a learned tail)."""

    def __init__(self, tokens: np.ndarray, grid: np.ndarray, names: list[str] | None = None,
                 backbone: str | None = None):
        self.grid = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
        cells = self.grid.prod(1)
        if tokens.ndim != 2 or len(tokens) != cells.sum():
            raise ValueError(f"tokens must be (total cells, C) with {cells.sum()} cells for these grids, "
                             f"got {tokens.shape}")
        self.tokens = tokens
        self.offsets = np.concatenate([[0], np.cumsum(cells)[:-1]])
        self.names = names or [str(i) for i in range(len(self.grid))]
        self.backbone = backbone
        self.mean = np.zeros(tokens.shape[1], np.float32)
        self.std = np.ones(tokens.shape[1], np.float32)
        self._stats = None
        self._table, self._table_stats = None, None

    def __getstate__(self) -> dict:
        """Worker processes get the memory-mapped tokens and the per-image statistics (computed once,
        here, before the first worker needs them), not the normalised table."""
        self._image_stats()
        return {**self.__dict__, "_table": None, "_table_stats": None}

    @property
    def channels(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return len(self.grid)

    def _image_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) channel mean and sum of squared deviations of each image's cells (summed in float32,
        kept as float64), read once, so that normalising on any split's training images is a pooling
        over rows."""
        if self._stats is None:
            means, m2 = np.empty((2, len(self), self.channels))
            for r in range(len(self)):
                cells = torch.from_numpy(np.array(
                    self.tokens[self.offsets[r]:self.offsets[r] + self.grid[r].prod()])).float()
                mean = cells.mean(0)
                means[r], m2[r] = mean.numpy(), cells.sub_(mean).square_().sum(0).numpy()
            self._stats = means, m2
        return self._stats

    def fit_normalisation(self, rows: np.ndarray) -> "TokenSet":
        """Per-channel mean/std over every cell of `rows` (the training images), pooled from the
        per-image statistics (Chan et al.'s parallel variance)."""
        rows = np.asarray(rows)
        means, m2 = self._image_stats()
        n_cells = self.grid[rows].prod(1)[:, None].astype(np.float64)
        mean = (n_cells * means[rows]).sum(0) / n_cells.sum()
        var = (m2[rows].sum(0) + (n_cells * (means[rows] - mean) ** 2).sum(0)) / n_cells.sum()
        std = np.sqrt(var)
        self.mean, self.std = mean.astype(np.float32), np.where(std > 0, std, 1).astype(np.float32)
        return self

    def keep_normalised(self, dtype: torch.dtype = torch.float32) -> "TokenSet":
        """Hold every cell normalised with the current mean/std in memory (bfloat16: 1.1 GB for LIVEC;
        float32: twice that, and slow to fault in), so that training reads windows by indexing instead
        of converting and normalising each window's fp16 cells at every step. Refilled when the
        statistics change; one table per process (_table_buffer), so keeping a table takes it from
        the token set that held it. The decoder's bf16 matmuls round their inputs to bfloat16 anyway."""
        stats = (self.mean.tobytes(), self.std.tobytes(), dtype)
        if self._table_stats != stats:
            self._table, self._table_stats = None, None
            table = _table_buffer(self, self.tokens.shape, dtype)
            for start in range(0, len(table), 2048):  # small parts: their buffer is reused, not faulted in anew
                part = self._normalised(np.array(self.tokens[start:start + 2048]))
                table[start:start + len(part)] = part
            self._table, self._table_stats = table, stats
        return self

    def cell_index(self, rows: np.ndarray, tops: np.ndarray | None, lefts: np.ndarray | None,
                   window: int) -> np.ndarray:
        """(len(rows), T) indices into `tokens` of each window's cells (window 0: the whole map,
        which needs the rows to share one grid)."""
        rows = np.asarray(rows)
        cols = self.grid[rows, 1]
        if window <= 0:
            self._check_one_grid(rows)
            return self.offsets[rows][:, None] + np.arange(self.grid[rows[0]].prod())[None]
        i, j = np.divmod(np.arange(window * window), window)
        return (self.offsets[rows][:, None] + (tops[:, None] + i[None]) * cols[:, None]
                + lefts[:, None] + j[None])

    def _kept(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The kept table when it holds the current statistics in `dtype`, else None."""
        if self._table is None or self._table_stats != (self.mean.tobytes(), self.std.tobytes(), dtype):
            return None
        return self._table

    def windows(self, rows: np.ndarray, tops: np.ndarray | None, lefts: np.ndarray | None,
                window: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(len(rows), T, C) normalised tokens of each window, rounded to `dtype`; only its cells
        are read. The values never depend on whether a table is kept: a table kept in `dtype` holds
        exactly these values and is read instead (bfloat16 in bf16 training, which the decoder's
        matmuls take as it is: no conversion at every step)."""
        idx = self.cell_index(rows, tops, lefts, window)
        table = self._kept(dtype)
        if table is not None:
            return table.index_select(0, torch.from_numpy(idx.ravel())).view(*idx.shape, self.channels)
        return self._normalised(np.asarray(self.tokens[idx.ravel()])).to(dtype).view(*idx.shape, self.channels)

    def image_maps(self, rows: np.ndarray, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Each image's cells (n_i, C), normalised and rounded to `dtype`: views of the kept table
        when it holds them (no copy)."""
        table = self._kept(dtype)
        spans = [(self.offsets[r], self.offsets[r] + self.grid[r].prod()) for r in rows]
        return [table[a:b] if table is not None else self._normalised(np.array(self.tokens[a:b])).to(dtype)
                for a, b in spans]  # np.array: a writable copy of the (memory-mapped) slice for torch

    def window_means(self, rows: np.ndarray, tops: np.ndarray, lefts: np.ndarray, window: int) -> np.ndarray:
        """(len(rows), C) float64 mean normalised token of each window: the mean of its raw cells from
        one integral image per image (window_average; window 0: the whole image, from _image_stats'
        float32 sums), then normalised (an affine map, so it commutes with the mean)."""
        rows = np.asarray(rows)
        if window <= 0:
            sums = self._image_stats()[0][rows]
        else:
            sums = np.empty((len(rows), self.channels))
            order = np.argsort(rows, kind="stable")
            for at in np.split(order, np.flatnonzero(np.diff(rows[order])) + 1) if len(rows) else []:
                r = rows[at[0]]
                (h, w), start = self.grid[r], self.offsets[r]
                cells = np.asarray(self.tokens[start:start + h * w], dtype=np.float64).reshape(1, h, w, -1)
                sums[at] = window_average(cells, tops[at][None], lefts[at][None], window)[0]
        return (sums - self.mean) / self.std

    def _normalised(self, cells: np.ndarray) -> torch.Tensor:
        """fp16 cells (n, C) -> float32, normalised with the current mean/std."""
        cells = torch.from_numpy(cells).float()  # torch converts fp16 ~4x faster than numpy
        return cells.sub_(torch.from_numpy(self.mean)).div_(torch.from_numpy(self.std))

    def image_means(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), C) each image's raw (unnormalised) token channels averaged over its cells."""
        return self._image_stats()[0][np.asarray(rows)].astype(np.float32)

    def _check_one_grid(self, rows: np.ndarray) -> None:
        grids = {tuple(g): r for r, g in zip(rows, self.grid[rows])}
        if len(grids) > 1:
            (a, ra), (b, rb) = list(grids.items())[:2]
            raise ValueError(f"whole maps (window 0) of images with different token grids cannot form one batch: "
                             f"{self.names[ra]} is {a[0]}x{a[1]}, {self.names[rb]} is {b[0]}x{b[1]}; use a window "
                             f"no larger than the smallest grid ({int(self.grid[rows].min())} cells per side)")

    def check_window(self, rows: np.ndarray, window: int) -> None:
        """Every image in `rows` must hold at least one window; whole maps (window 0) need one grid."""
        if window <= 0:
            self._check_one_grid(np.asarray(rows))
            return
        small = [r for r in rows if min(self.grid[r]) < window]
        if small:
            r = small[0]
            raise ValueError(f"image {self.names[r]} has a {self.grid[r][0]}x{self.grid[r][1]} token grid, smaller "
                             f"than the {window}x{window} window ({len(small)} such images); use a smaller window")

    def random_positions(self, rows: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if window <= 0:
            return np.zeros(len(rows), int), np.zeros(len(rows), int)
        g = self.grid[rows]
        return rng.integers(0, g[:, 0] - window + 1), rng.integers(0, g[:, 1] - window + 1)

    def grid_positions(self, row: int, window: int, n: int = 0) -> list[tuple[int, int]]:
        """Evenly spaced window positions on one image's map, from corner to corner: n per side, or
        with n = 0 the fewest that leave no cell unread: ceil(side / window) per side."""
        if window <= 0:
            return [(0, 0)]

        def starts(side: int) -> np.ndarray:
            count = n or -(-side // window)
            return np.unique(np.round(np.linspace(0, side - window, count)).astype(int))

        h, w = self.grid[row]
        return [(t, l) for t in starts(h) for l in starts(w)]

    def grid_windows(self, rows: np.ndarray, window: int, n: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every grid window (grid_positions) of the images `rows`, image after image: their image
        rows, tops and lefts."""
        owner, tops, lefts = self.owned_grid_windows(rows, window, n)
        return np.asarray(rows, dtype=np.int64)[owner], tops, lefts

    def owned_grid_windows(self, rows: np.ndarray, window: int, n: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """grid_windows, with each window's owner given as its image's index in `rows` (ascending)."""
        per_image = [self.grid_positions(r, window, n) for r in rows]
        tops, lefts = np.array([q for p in per_image for q in p], dtype=np.int64).reshape(-1, 2).T
        return np.repeat(np.arange(len(per_image)), [len(p) for p in per_image]), tops, lefts
