"""The seeds' code under test, as the bench tools take it: seed 002 is a
patch on Debian's 6.1; seeds 000, 001, 003 and 004 are merged code, the
functions their images/seeds/<seed>.targets file names, on Debian's 6.12,
with the selection its comments name and its list of equivalent mutants."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..kernel.build import Source, debian_source
from ..util import REPO
from .mutants import parse_targets, targets_selection
from .runs import targets_equivalent_file, write_targets_patch

SEEDS = ("000", "001", "002", "003", "004")
SEED_002 = REPO / "images/patches/0001-net-core-add-optional-threading-for-backlog-processing.patch"
SEED_002_SELECTION = "threaded_backlog or flush_unregister"


@dataclasses.dataclass(frozen=True)
class SeedCode:
    source: Source
    patch: Path                    # the patch, or the targets' no-op patch
    selection: str
    equivalents: Path | None       # None: the list beside the patch


def seed_code(seed: str, out: Path, *, patch: str | None = None, series: str | None = None,
              selection: str | None = None) -> SeedCode:
    """Seed ``seed``'s code (or ``patch`` on 6.1), the targets' patch written under ``out``."""
    if seed == "002" or patch:
        return SeedCode(debian_source(series or "6.1"), Path(patch or SEED_002),
                        selection or SEED_002_SELECTION, None)
    source = debian_source(series or "6.12")
    targets = REPO / "images" / "seeds" / f"{seed}.targets"
    text = targets.read_text()
    return SeedCode(source, write_targets_patch(parse_targets(text, str(targets)), source, out),
                    selection or targets_selection(text) or "", targets_equivalent_file(targets, source))
