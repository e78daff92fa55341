"""`kar maintain`: compact every table's small files and vacuum the files no version needs.

Stages append Parquet parts and commit them (jobs/plumbing/tables.py), so tables gather small
files; a killed run can leave parts it never committed. Compaction rewrites small
files into large ones (readers see the same rows; a new version), and vacuum deletes
files that no version younger than `run.retain_hours` uses, uncommitted parts
included. The weekly run calls it last; it is safe to run at any time between runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config

log = logging.getLogger(__name__)

# publish's offline feature tables (jobs/publish.py), beside the job's own tables.
FEATURE_TABLES = ["features_item", "features_user"]


@dataclass
class MaintainResult:
    # table -> (files compacted into new ones, files deleted)
    compacted: dict[str, int] = field(default_factory=dict)
    vacuumed: dict[str, int] = field(default_factory=dict)


def run(conf: Config) -> MaintainResult:
    """Compact, then vacuum, each table of this output directory that exists."""
    result = MaintainResult()
    for name in [*sorted(schemas.TABLES), *FEATURE_TABLES]:
        path = conf.table_path(name)
        if tables.open_table(path) is None:
            continue
        metrics = tables.compact(path)
        result.compacted[name] = int(metrics.get("numFilesRemoved", 0))
        result.vacuumed[name] = len(tables.vacuum(path, conf.run.retain_hours))
    log.info(
        "maintain: compacted %d files, deleted %d files no version younger than %d h uses",
        sum(result.compacted.values()),
        sum(result.vacuumed.values()),
        conf.run.retain_hours,
    )
    return result
