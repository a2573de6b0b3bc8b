"""A reader over records already in memory (labelled tasks fetched from Label Studio, test fixtures)."""

from __future__ import annotations

from collections.abc import Sequence

from model.data.sample import PairRecord


class InMemoryReader:
    """A :class:`~model.data.sample.PairReader` over a list of records."""

    def __init__(self, records: Sequence[PairRecord], class_names: Sequence[str]) -> None:
        self.records = list(records)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PairRecord:
        return self.records[index]

    @property
    def pair_ids(self) -> list[str]:
        return [r.pair_id for r in self.records]
