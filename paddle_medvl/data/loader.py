"""The one way the project makes a ``paddle.io.DataLoader``: training, validation loss and generation.

    loader = data_loader(dataset, batch_size=8, collate_fn=collate, num_workers=cfg.Data.num_workers, name="train")

Why not Paddle's own: with workers, Paddle loses the error of a bad sample (``workarounds`` 6) and
every worker counts its own skipped records. Here, with or without workers:

* an error in ``dataset[i]`` or ``collate_fn`` is raised in the main process as itself (a
  :class:`DataError` keeps its "<file>: ... (record <ID>)" message), once the workers are stopped;
* a sample may carry ``SKIPPED``: the IDs of the records it stands in for (``Data.on_error: skip``).
  The main process pops them from the batch, collects them in ``Loader.skipped_ids`` (and in the
  dataset's ``skipped_ids`` set when it has one: what end-of-run reports count) and prints one line
  per pass that skipped any. A record counts once, however often it was skipped.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterator

import paddle

from ..workarounds import catch_collate_errors, catch_dataset_errors, raise_caught_errors

SKIPPED = "_medvl_skipped"  # sample/batch key: the record IDs skipped to make it
SHOWN_IDS = 5  # record IDs named in a pass's skip line


class _SkipNotes:
    """``collate_fn`` that moves the samples' ``SKIPPED`` notes into one list on the batch (picklable)."""

    def __init__(self, collate_fn: Callable[[list], Any] | None) -> None:
        from paddle.io.dataloader.collate import default_collate_fn

        self.collate_fn = collate_fn or default_collate_fn

    def __call__(self, samples: list) -> Any:
        notes: list[str] = []
        for sample in samples:
            if isinstance(sample, dict) and SKIPPED in sample:  # a fresh dict per __getitem__: popping is safe
                notes += list(sample.pop(SKIPPED))
        batch = self.collate_fn(samples)
        if notes:
            if not isinstance(batch, dict):
                raise TypeError(f"samples skipped records ({', '.join(notes)}), but collate_fn returns "
                                f"{type(batch).__name__}, not a dict to carry the count")
            batch[SKIPPED] = notes
        return batch


class Loader(paddle.io.DataLoader):
    """``paddle.io.DataLoader`` (so paddlenlp's ``Trainer`` still sets its sampler's epoch) whose workers
    hand errors and skip notes to the main process; see the module docstring."""

    def __init__(self, dataset: paddle.io.Dataset, *, collate_fn: Callable[[list], Any] | None = None,
                 name: str = "loader", **kwargs: Any) -> None:
        super().__init__(catch_dataset_errors(dataset), collate_fn=catch_collate_errors(_SkipNotes(collate_fn)), **kwargs)
        self.source = dataset
        self.name = name
        self.skipped_ids: set[str] = set()  # records skipped in the batches delivered, all passes and workers

    def __iter__(self) -> Iterator:
        return self._pass(super().__iter__())  # the workers start here, as with Paddle's own

    def __call__(self) -> Iterator:
        return self.__iter__()

    def _pass(self, iterator: Iterator) -> Iterator:
        skipped: dict[str, None] = {}  # this pass's, in order
        try:
            for batch in raise_caught_errors(iterator):
                if isinstance(batch, dict) and SKIPPED in batch:
                    ids = list(batch.pop(SKIPPED))
                    skipped.update(dict.fromkeys(ids))
                    self.skipped_ids.update(ids)
                    shared = getattr(self.source, "skipped_ids", None)
                    if isinstance(shared, set):
                        shared.update(ids)
                yield batch
        finally:  # the pass ended, was left early, or failed
            if skipped:
                ids = list(skipped)
                shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
                print(f"[paddle_medvl] {self.name}: skipped {len(ids)} records in this pass ({shown}); "
                      f"{len(self.skipped_ids)} in all (Data.on_error=skip)", file=sys.stderr, flush=True)


def data_loader(
    dataset: paddle.io.Dataset,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    drop_last: bool = False,
    batch_sampler: paddle.io.BatchSampler | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    num_workers: int = 0,
    name: str = "loader",
) -> Loader:
    """A :class:`Loader` over a map-style dataset (``name`` labels its skip lines)."""
    if batch_sampler is not None:
        return Loader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers, name=name)
    return Loader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, collate_fn=collate_fn,
                  num_workers=num_workers, name=name)
