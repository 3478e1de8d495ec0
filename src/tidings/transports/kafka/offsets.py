"""Which offset a consumer group may commit: the finished prefix of each partition, never more.

Kafka remembers one position per partition and group: everything before it counts as done.
Handlers finish out of order (several run at once), so the position may only move up to the
first message still being handled — committing a later one would lose the running message if
the consumer died now. Messages the queue's patterns do not select are finished as soon as
they are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PartitionOffsets:
    """One partition's messages handed out and not yet settled, and how far it was read."""

    #: the next offset to read (one past the highest handed out)
    next: int
    #: handed out, a handler may be working on them
    unsettled: set[int] = field(default_factory=set)
    #: handed back (released): nobody works on them, and the position may not pass them
    released: set[int] = field(default_factory=set)
    #: the last position committed (or found committed when the partition was assigned)
    committed: int = -1
    #: which assignment of the partition to this member these are: a settle of a message handed
    #: out under an earlier one must not touch them (it may have the offset of a running one)
    epoch: int = 0

    def delivered(self, offset: int) -> None:
        self.unsettled.add(offset)
        self.next = max(self.next, offset + 1)

    def skipped(self, offset: int) -> None:
        """Read and not for this queue: finished at once."""
        self.next = max(self.next, offset + 1)

    def settled(self, offset: int) -> None:
        self.unsettled.discard(offset)

    def release(self, offset: int) -> None:
        self.unsettled.discard(offset)
        self.released.add(offset)

    def position(self) -> int:
        """Where the group may say it is: the first offset not finished, or the next to read."""
        waiting = self.unsettled | self.released
        return min(waiting) if waiting else self.next

    def to_commit(self) -> int | None:
        """The position, when it moved past what was committed; else None."""
        position = self.position()
        return position if position > self.committed else None


class Offsets:
    """Every assigned partition's offsets (``(topic, partition)`` → :class:`PartitionOffsets`)."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionOffsets] = {}
        self._assignments = 0

    def assigned(self, topic: str, partition: int, position: int) -> None:
        self._assignments += 1
        self.partitions[(topic, partition)] = PartitionOffsets(
            next=position, committed=position, epoch=self._assignments
        )

    def revoked(self, topic: str, partition: int) -> None:
        self.partitions.pop((topic, partition), None)

    def delivered(self, topic: str, partition: int, offset: int) -> int | None:
        """Handed out: the partition's assignment (its epoch) to settle it with; None when the
        partition is not assigned (a record read before a revoke): not to be handed out."""
        found = self.partitions.get((topic, partition))
        if found is None:
            return None
        found.delivered(offset)
        return found.epoch

    def skipped(self, topic: str, partition: int, offset: int) -> None:
        found = self.partitions.get((topic, partition))
        if found is not None:
            found.skipped(offset)

    def settled(self, topic: str, partition: int, offset: int, epoch: int | None = None) -> None:
        """A handler finished with it; a partition revoked meanwhile (even if assigned again
        since: ``epoch`` tells) is no longer ours to commit."""
        found = self._current(topic, partition, epoch)
        if found is not None:
            found.settled(offset)

    def release(self, topic: str, partition: int, offset: int, epoch: int | None = None) -> None:
        """Handed back unfinished: the position stays before it until it is taken again
        (:meth:`taken_again`) and settled, or the partition's next reader gets it."""
        found = self._current(topic, partition, epoch)
        if found is not None:
            found.release(offset)

    def taken_again(self, topic: str, partition: int, offset: int, epoch: int) -> bool:
        """A message released under assignment ``epoch`` is handed out again: False when the
        partition was revoked since (its next reader reads it from the committed position)."""
        found = self._current(topic, partition, epoch)
        if found is None or offset not in found.released:
            return False
        found.released.discard(offset)
        found.unsettled.add(offset)
        return True

    def unsettled(self, topic: str, partition: int) -> int:
        """How many of the partition's messages handlers may be working on."""
        found = self.partitions.get((topic, partition))
        return len(found.unsettled) if found is not None else 0

    def to_commit(self, only: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """The positions that moved: ``(topic, partition)`` → offset to commit."""
        moved = {}
        for key, offsets in self.partitions.items():
            if only is not None and key not in only:
                continue
            position = offsets.to_commit()
            if position is not None:
                moved[key] = position
        return moved

    def committed(self, positions: dict[tuple[str, int], int]) -> None:
        for key, position in positions.items():
            found = self.partitions.get(key)
            if found is not None:
                found.committed = max(found.committed, position)

    def _current(self, topic: str, partition: int, epoch: int | None) -> PartitionOffsets | None:
        found = self.partitions.get((topic, partition))
        if found is None or (epoch is not None and found.epoch != epoch):
            return None
        return found
