"""One writer for every output set: the files a command writes together, put in place all
together or not at all.

An :class:`OutputSet` is the plan: the set's main file (a CSV), its companions (kind -> path,
in the order they are moved in), which of them are folders the tool makes, the old views a
new set removes, and the output set the ledger records the files under
(:func:`.ownership.set_name`). :func:`write` checks that every member may be replaced
(:func:`.ownership.check_replaceable`), has each member's writer write it into a staging
folder (:func:`.staged_commit.staging`), makes sure every planned member and nothing else was
written, and commits them through :func:`.staged_commit.commit_staged`: companions first, the
main file last, so a reader of the main file never sees half a set; if anything fails,
nothing changes.

``run`` (:mod:`.output`), ``check`` (:mod:`.check`) and ``cleanse`` (:mod:`.cleanse`) write
their sets through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from .ownership import check_replaceable, set_name
from .staged_commit import commit_staged, staging

#: The kind of a set's main file.
MAIN = "csv"


def companion_path(main: str, suffix: str) -> str:
    """The absolute path named after ``main``'s stem with ``suffix`` (``_summary.txt``)."""
    folder, name = os.path.split(os.path.abspath(main))
    return os.path.join(folder, os.path.splitext(name)[0] + suffix)


@dataclass
class OutputSet:
    """The files one command writes together (absolute paths).

    Attributes:
        main: the main file, moved in last.
        command: the command that writes the set (``run``, ``check``, ``cleanse``).
        flag: the output option that chose ``main``, for messages.
        companions: kind -> path of every other member this command writes, in the order
            they are moved in.
        folders: the kinds in ``companions`` that are folders the tool makes.
        stale: old views a new set removes if the tool wrote them (a view the set no
            longer has).
        owner: the output set the ledger records the files under; None: ``command`` and
            ``main``'s name (a ``cleanse`` of a run's own cleansed CSV keeps the run's).

    """

    main: str
    command: str
    flag: str = "--output"
    companions: Dict[str, str] = field(default_factory=dict)
    folders: Sequence[str] = ()
    stale: Sequence[str] = ()
    owner: Optional[str] = None

    def __post_init__(self) -> None:
        self.main = os.path.abspath(self.main)
        self.owner = self.owner or set_name(self.command, self.main)

    @property
    def folder(self) -> str:
        """The folder the set is written to (it holds the ledger)."""
        return os.path.dirname(self.main)

    @property
    def kinds(self) -> List[str]:
        """Every member's kind, in the order they are moved in (:data:`MAIN` last)."""
        return [*self.companions, MAIN]

    def path(self, kind: str) -> str:
        """The final path of member ``kind``."""
        return self.main if kind == MAIN else self.companions[kind]

    def get(self, kind: str) -> Optional[str]:
        """The final path of member ``kind``, or None when the set does not write it."""
        return self.main if kind == MAIN else self.companions.get(kind)

    def check(self) -> None:
        """Refuse the set if any member is not the tool's to replace, or belongs to another
        output set (:func:`.ownership.check_replaceable`).
        """
        for kind, path in self.companions.items():
            check_replaceable(path, self.flag, folder=kind in self.folders, owner=self.owner)
        check_replaceable(self.main, self.flag, owner=self.owner)


#: A member's writer: writes that member (a file, or a folder it makes) at the path given.
Writer = Callable[[str], None]


def write(plan: OutputSet, writers: Mapping[str, Writer]) -> None:
    """Write every member of ``plan`` and put them in place together.

    Args:
        plan: the set.
        writers: kind -> writer, one for each member of ``plan``, called in this order with
            the member's staged path: a writer may read the members written before it
            (the report embeds the staged thumbnails).

    Raises:
        OutputError: a member is not the tool's to replace, or writing or committing failed
            (disk full, permissions, a file open in another program): nothing changed.
        ValueError: ``writers`` does not match the plan's members (a programming error).

    """
    if sorted(writers) != sorted(plan.kinds):
        raise ValueError(f"writers for {sorted(writers)}, but the set has {sorted(plan.kinds)}")
    plan.check()
    with staging(plan.folder, plan.flag) as stage:
        staged = {kind: os.path.join(stage, os.path.basename(plan.path(kind))) for kind in writers}
        for kind, writer in writers.items():
            writer(staged[kind])
        missing = [kind for kind in plan.kinds if not os.path.lexists(staged[kind])]
        if missing:
            raise ValueError(f"the writers left out {missing} of the set {plan.owner}")
        moves = [(staged[kind], plan.path(kind)) for kind in plan.kinds]
        commit_staged(plan.folder, moves, list(plan.stale), plan.flag, owner=plan.owner)
