"""evaluate: does the knowledge help ranking? {backbone} x {no KAR, co-trained, frozen} x seeds.

Reads the tables a weekly run left behind (`samples`, `attributes`, `knowledge`,
`prompts`); it never generates: answers come from the cached `knowledge` table.
It keeps KAR's protocol, so its table stays comparable: user texts are answers
to KAR's-cut prompts (window "evaluation": prepare.window=evaluation, or the
bootstrap prompts of a production run), scored on the samples after the cut.
Per seed the users are split 9:1 again (prepare.test_fraction), a validation
slice of the training users picks the epoch, and every row of that seed shares
the split, initial seed and epoch budget, so lifts are paired:

- no KAR: each backbone on the shared features alone (the baseline of its lifts);
- co-trained: adaptor (adapt.adaptor) + backbone, one loss (the paper's way);
- frozen: vectors exported from the DIN-co-trained adaptor of the same seed and
  text variant, written to a VECTORS Delta table and read back as fixed dense
  inputs of the other backbones (what downstream teams do).

Text variants (evaluate.texts), encoded with the configured sentence encoder:
kar (user = the prompt's history part + answer, item = answer), user_only and
item_only (one tower of kar), no_llm (user = history part, item = title with
year + genres: no LLM at all) and answer_only (the answers alone). A variant
whose texts need answers that `knowledge` lacks is skipped and the report says
so. Outputs: report.md (mean ± std AUC / LogLoss and per-seed paired lifts),
lift.png, results.json (every training run) under evaluate.out_dir; the encoder
cache and the exported vectors under <run.output_dir>/evaluate.

One process, by design: it is an offline quality study on the sampled benchmark
data (data.sample.max_users / max_items), reading `samples`, `prompts`,
`knowledge` and `attributes` whole and training every variant in memory. That is
bounded by the sample the config draws, not by production traffic; it is not a
stage of the weekly run, whose adapt stage samples its own training data
(adapt.max_train_rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from adapters import data as ctr_data
from adapters.data import EntityMatrix
from adapters.moe import TOWERS, HybridExpertAdaptor, Tower
from adapters.train import BACKBONES, KarMode, TrainResult, train_and_evaluate
from adapters.vectors import export
from encoders.inputs import encoder_input
from jobs.plumbing import schemas, storage, tables
from jobs.plumbing.config import Backbone, Config
from jobs.plumbing.errors import InputError
from jobs.plumbing.models import resolve_model
from jobs.plumbing.storage import Location
from jobs.rules import ctr, knowledge

log = logging.getLogger(__name__)

# What each tower reads per text variant (None: the variant has no such tower).
# history = the prompt's entity part (user: demographics + rated titles),
# answer = the LLM's answer, metadata = item title with year + genres.
SOURCES: dict[str, dict[Tower, str]] = {
    "kar": {"user": "history+answer", "item": "answer"},
    "user_only": {"user": "history+answer"},
    "item_only": {"item": "answer"},
    "no_llm": {"user": "history", "item": "metadata"},
    "answer_only": {"user": "answer", "item": "answer"},
}
TEXT_LABELS = {
    "kar": "KAR: history + answer / answer",
    "user_only": "user text only (history + answer)",
    "item_only": "item text only (answer)",
    "no_llm": "no LLM: history / title, year, genres",
    "answer_only": "answer only / answer",
}


@dataclass(frozen=True)
class Run:
    """One trained model: its backbone, KAR text variant and mode, seed and test scores."""

    seed: int
    backbone: str
    text: str  # a TextVariant, or "none"
    mode: str  # KarMode
    auc: float
    logloss: float
    best_epoch: int
    seconds: float


@dataclass(frozen=True)
class EntityTexts:
    """Per kind: entity id -> {"history": ..., "answer": ..., "metadata": ...} (what exists)."""

    by_kind: dict[str, dict[str, dict[str, str]]]
    llm_models: set[str]
    # entity_id, history_end: where each user's answered prompt (KAR's cut) ended.
    prompt_ends: pa.Table

    def texts(self, kind: Tower, source: str) -> tuple[list[str], list[str], int]:
        """(ids, texts, total): entities that have every part `source` needs, and of how many."""
        parts = source.split("+")
        entities = self.by_kind.get(kind, {})
        ids = sorted(e for e, t in entities.items() if all(p in t for p in parts))
        if source == "history+answer":
            texts = [
                encoder_input("user", entities[e]["history"], entities[e]["answer"]) for e in ids
            ]
        else:
            texts = [entities[e][source] for e in ids]
        return ids, texts, len(entities)


def _kar_protocol(rows: pa.Table) -> pa.Table:
    """Item rows, and user rows from KAR's cut (prepare.window: evaluation, or bootstrap)."""
    return rows.filter(
        pc.or_(
            pc.equal(rows.column("kind"), "item"),
            pc.fill_null(pc.equal(rows.column("window"), "evaluation"), False),
        )
    )


def _latest_knowledge(conf: Config) -> tuple[pa.Table, pa.Table]:
    """(latest row, latest usable row) per entity, users' from KAR's cut only.

    An answer that stayed bad after every retry (usable=false) is no answer, but
    an entity with nothing else still counts, with its context as history.
    """
    cols = ["kind", "entity_id", "context", "text", "model_id", "history_end"]
    know = tables.open_table(conf.table_path("knowledge"))
    if know is None:
        empty = pa.table({c: pa.array([], pa.string()) for c in cols[:5]})
        return empty, empty.append_column("history_end", pa.array([], pa.int32()))
    rows = _kar_protocol(know.to_pyarrow_table(columns=[*cols, "usable", *knowledge.ORDER]))
    usable = rows.filter(rows["usable"])
    latest = knowledge.current(rows).select(cols[:5])
    return latest, knowledge.current(usable).select(cols)


def entity_texts(conf: Config, attributes: pa.Table) -> EntityTexts:
    """History parts (prompts, else knowledge), answers (usable knowledge), item metadata.

    `prompts` holds the entities whose inputs changed at the last prepare, so its
    context is the newest; the others' current context is their knowledge's.
    """
    by_kind: dict[str, dict[str, dict[str, str]]] = {k: {} for k in TOWERS}
    latest, answers = _latest_knowledge(conf)
    for kind, eid, context in zip(
        *(latest.column(c).to_pylist() for c in ("kind", "entity_id", "context")), strict=True
    ):
        by_kind[kind][eid] = {"history": context}
    # The answer's own context, as the encode stage pairs them.
    for kind, eid, context, text in zip(
        *(answers.column(c).to_pylist() for c in ("kind", "entity_id", "context", "text")),
        strict=True,
    ):
        by_kind[kind][eid] = {"history": context, "answer": text}
    published, _ = tables.read_published(conf.table_path("prompts"), schemas.PROMPTS, "prepare")
    prompts = _kar_protocol(published)
    for kind, eid, context in zip(
        *(prompts.column(c).to_pylist() for c in ("kind", "entity_id", "context")), strict=True
    ):
        by_kind[kind].setdefault(eid, {})["history"] = context
    genres: dict[str, list[str]] = {}
    for kind, eid, attr, value in zip(
        *(attributes.column(c).to_pylist() for c in ("kind", "entity_id", "attribute", "value")),
        strict=True,
    ):
        if kind == "item" and attr == "genre":
            genres.setdefault(eid, []).append(value)
    for eid, parts in by_kind["item"].items():
        if "history" in parts:  # the item part of the prompt: "Movie: <title> (<year>)"
            listed = ", ".join(sorted(genres.get(eid, []))) or "unknown"
            parts["metadata"] = f"{parts['history']}. Genres: {listed}."
    users = answers.filter(pc.equal(answers.column("kind"), "user"))
    return EntityTexts(
        by_kind,
        set(answers.column("model_id").to_pylist()),
        users.select(["entity_id", "history_end"]),
    )


class CachedEncoder:
    """The configured sentence encoder, loaded on first use; vectors cached on disk by text."""

    def __init__(self, conf: Config, cache_dir: Path) -> None:
        self.conf, self.cache_dir = conf, cache_dir
        self._encoder = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        key = hashlib.sha256(
            "\x00".join([self.conf.encoder.model, *texts]).encode("utf-8")
        ).hexdigest()[:24]
        path = self.cache_dir / f"{key}.npy"
        if path.is_file():
            return np.load(path)
        if self._encoder is None:
            from encoders.sentence import SentenceEncoder

            enc = self.conf.encoder
            self._encoder = SentenceEncoder(
                resolve_model(enc.model, "encoder", self.conf.run.cache_dir),
                device=enc.device,
                batch_size=enc.batch_size,
            )
        started = time.monotonic()
        vectors = self._encoder.encode(texts)
        log.info("encoded %d texts in %.1f s", len(texts), time.monotonic() - started)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
        return vectors


def text_matrices(
    texts: EntityTexts, variant: str, encode: Callable[[list[str]], np.ndarray]
) -> tuple[dict[Tower, EntityMatrix], list[str]]:
    """The variant's text embeddings per tower, and why it cannot run (empty list: it can)."""
    matrices: dict[Tower, EntityMatrix] = {}
    problems = []
    for kind, source in SOURCES[variant].items():
        ids, strings, total = texts.texts(kind, source)
        if not ids:
            problems.append(f"no {kind} has a {source} text (run kar generate for answers)")
            continue
        if len(ids) < total:
            log.warning("%s: %d of %d %ss have a %s text", variant, len(ids), total, kind, source)
        matrices[kind] = EntityMatrix(ids, encode(strings))
    return matrices, problems


def _frozen_vectors(
    adaptor: HybridExpertAdaptor,
    matrices: dict[Tower, EntityMatrix],
    path: Location,
    version_id: str,
    llm: str,
    enc: str,
) -> tuple[EntityMatrix | None, EntityMatrix | None]:
    """Export the co-trained adaptor's vectors to a VECTORS table and read them back as stored."""
    now = datetime.now(UTC)
    rows = pa.concat_tables(
        ctr.vector_rows(
            kind,
            vectors,
            now,
            version_id=version_id,
            fingerprint=version_id,
            llm_model=llm,
            encoder_model=enc,
            adaptor=adaptor.describe(),
            input_fingerprint=version_id,
        )
        for kind, vectors in export(adaptor, matrices).items()
    )
    version = tables.overwrite(path, rows, schemas.VECTORS, metadata={"version_id": version_id})
    return ctr.read_vectors(path, version, version_id)


def run(conf: Config) -> dict:
    """Train every configured row for every seed; write report.md, lift.png, results.json."""
    started = time.monotonic()
    ev = conf.evaluate
    work_dir = conf.output("evaluate")  # the frozen rows' exported vectors (a table)
    out_dir = storage.location(ev.out_dir, conf.storage.options) if ev.out_dir else work_dir
    samples, _ = tables.read_published(conf.table_path("samples"), schemas.SAMPLES, "prepare")
    if samples.num_rows == 0:
        raise InputError(
            f"samples table at {conf.table_path('samples')} is missing or empty; "
            "run kar prepare first"
        )
    attributes, _ = tables.read_published(
        conf.table_path("attributes"), schemas.ATTRIBUTES, "prepare"
    )
    texts = entity_texts(conf, attributes)
    if texts.prompt_ends.num_rows == 0:
        raise InputError(
            f"no user answer from KAR's cut in {conf.table_path('knowledge')}: kar evaluate "
            "keeps KAR's protocol; run kar prepare (a first production run adds these "
            "prompts) or kar run with prepare.window=evaluation, then kar generate"
        )
    # The samples start at today's cut; an answer from a longer history must not see them.
    ends = texts.prompt_ends
    samples = knowledge.after_prompts(samples, ends.column("entity_id"), ends.column("history_end"))
    encode = CachedEncoder(conf, conf.evaluate_cache())
    llm = ",".join(sorted(texts.llm_models)) or "none"

    variants: dict[str, dict[Tower, EntityMatrix]] = {}
    skipped: dict[str, str] = {}
    for variant in ev.texts:
        matrices, problems = text_matrices(texts, variant, encode)
        if problems:
            skipped[variant] = "; ".join(problems)
            log.warning("skipping text variant %s: %s", variant, skipped[variant])
        else:
            variants[variant] = matrices

    runs: list[Run] = []
    for seed in tqdm(ev.seeds, desc="evaluate seeds", unit="seed"):
        runs += evaluate_seed(conf, seed, samples, attributes, variants, llm, work_dir)

    report = render_report(conf, runs, skipped, texts)
    results = json.dumps({"runs": [asdict(r) for r in runs], "skipped": skipped}, indent=1)
    with tempfile.TemporaryDirectory(prefix="kar-evaluate-") as scratch:
        title = f"AUC lift over each backbone, {len(ev.seeds)} seeds"
        plot_lifts(summarize(runs), Path(scratch) / "lift.png", title=title)
        (Path(scratch) / "results.json").write_text(results)
        out_dir.upload(Path(scratch))
    (out_dir / "report.md").write_bytes(report.encode())  # last: its chart is in place
    chart = out_dir / "lift.png"
    seconds = time.monotonic() - started
    log.info("evaluate: %d training runs in %.0f s; report %s", len(runs), seconds, out_dir)
    return {
        "report": str(out_dir / "report.md"),
        "chart": str(chart),
        "results": str(out_dir / "results.json"),
        "runs": len(runs),
        "skipped": skipped,
        "seconds": round(seconds, 1),
        "markdown": report,
    }


def evaluate_seed(
    conf: Config,
    seed: int,
    samples: pa.Table,
    attributes: pa.Table,
    variants: dict[str, dict[Tower, EntityMatrix]],
    llm: str,
    work_dir: Location,
) -> list[Run]:
    """Every row of one seed: one user split, validation slice and initialisation for all."""
    ev = conf.evaluate
    split = ctr_data.resplit(samples, conf.prepare.test_fraction, seed)
    runs: list[Run] = []

    def build(users: EntityMatrix | None, items: EntityMatrix | None) -> ctr_data.CTRData:
        return ctr.ctr_inputs(conf, split, attributes, seed, users, items)

    def train(data: ctr_data.CTRData, backbone: Backbone, text: str, mode: KarMode) -> TrainResult:
        r = train_and_evaluate(data, conf.adapt, seed, mode, backbone)
        runs.append(Run(seed, backbone, text, mode, r.auc, r.logloss, r.best_epoch, r.seconds))
        return r

    base = build(None, None)
    for backbone in ev.backbones:
        train(base, backbone, "none", "none")
    frozen_backbones = [b for b in ev.backbones if b != "din"] if "frozen" in ev.modes else []
    for variant, matrices in variants.items():
        data = build(matrices.get("user"), matrices.get("item"))
        din: TrainResult | None = None
        if "cotrained" in ev.modes:
            for backbone in ev.backbones:
                result = train(data, backbone, variant, "cotrained")
                din = result if backbone == "din" else din
        if not frozen_backbones:
            continue
        if din is None:  # frozen vectors always come from a DIN-co-trained adaptor
            din = train_and_evaluate(data, conf.adapt, seed, "cotrained", "din")
        frozen = _frozen_vectors(
            din.model.adaptor.cpu(),
            matrices,
            work_dir / "tables" / "vectors",
            f"{variant}-seed{seed}",
            "none" if variant == "no_llm" else llm,
            conf.encoder.model,
        )
        frozen_data = build(*frozen)
        for backbone in frozen_backbones:
            train(frozen_data, backbone, variant, "frozen")
    return runs


@dataclass(frozen=True)
class Row:
    """One (backbone, text, mode) over seeds, with its paired lifts over the no-KAR row."""

    backbone: str
    text: str
    mode: str
    aucs: list[float]
    loglosses: list[float]
    lifts: list[float]  # per seed: this AUC - the same backbone's no-KAR AUC


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(runs: list[Run]) -> list[Row]:
    """Rows in run order, each with per-seed lifts paired on seed (same split and init)."""
    base = {(r.backbone, r.seed): r.auc for r in runs if r.mode == "none"}
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.backbone, r.text, r.mode), []).append(r)
    rows = []
    for (backbone, text, mode), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.seed)
        lifts = [r.auc - base[(backbone, r.seed)] for r in rs] if mode != "none" else []
        rows.append(Row(backbone, text, mode, [r.auc for r in rs], [r.logloss for r in rs], lifts))
    order = {b: i for i, b in enumerate(BACKBONES)}
    return sorted(rows, key=lambda r: (order[r.backbone], r.mode != "none", r.text, r.mode))


def render_report(
    conf: Config, runs: list[Run], skipped: dict[str, str], texts: EntityTexts
) -> str:
    ev, ad = conf.evaluate, conf.adapt
    n = {k: len(v) for k, v in texts.by_kind.items()}
    answered = {k: sum("answer" in t for t in v.values()) for k, v in texts.by_kind.items()}
    models = ", ".join(sorted(texts.llm_models)) or "none"
    lines = [
        f"Seeds {', '.join(map(str, ev.seeds))} (each: new {1 - conf.prepare.test_fraction:.0%}"
        f":{conf.prepare.test_fraction:.0%} user split, validation slice of training users "
        f"picks the epoch); up to {ad.epochs} epochs"
        + (f", patience {ad.patience}" if ad.patience else "")
        + f"; adaptor {ad.adaptor.kind}; encoder {conf.encoder.model}; "
        f"LLM answers for {answered.get('user', 0)}/{n.get('user', 0)} users and "
        f"{answered.get('item', 0)}/{n.get('item', 0)} items ({models}).",
        "",
        "| backbone | KAR vectors | text | AUC (mean ± std) | LogLoss (mean ± std) "
        "| AUC lift (mean ± std) | lift per seed | best epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    epochs = {}
    for r in runs:
        epochs.setdefault((r.backbone, r.text, r.mode), []).append(r.best_epoch)
    for row in summarize(runs):
        auc, auc_sd = _mean_std(row.aucs)
        ll, ll_sd = _mean_std(row.loglosses)
        if row.lifts:
            lift, lift_sd = _mean_std(row.lifts)
            lift_cell = f"{lift:+.4f} ± {lift_sd:.4f}"
            per_seed = ", ".join(f"{x:+.4f}" for x in row.lifts)
        else:
            lift_cell, per_seed = "(baseline)", ""
        text = "-" if row.text == "none" else TEXT_LABELS[row.text]
        eps = ",".join(map(str, epochs[(row.backbone, row.text, row.mode)]))
        lines.append(
            f"| {BACKBONES[row.backbone].label} | {row.mode} | {text} | {auc:.4f} ± {auc_sd:.4f} "
            f"| {ll:.4f} ± {ll_sd:.4f} | {lift_cell} | {per_seed} | {eps} |"
        )
    for variant, why in skipped.items():
        lines.append(f"\nNot run: {TEXT_LABELS[variant]}: {why}.")
    lines.append(
        "\nstd is the sample standard deviation over seeds; a lift is paired: same seed, split, "
        "initialisation and epoch budget as the backbone's no-KAR row."
    )
    return "\n".join(lines) + "\n"


def plot_lifts(rows: list[Row], path: Path, title: str) -> None:
    """Horizontal bars: mean AUC lift ± std per (backbone, mode, text), zero line marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.lifts]
    if not rows:
        return
    labels = [
        f"{BACKBONES[r.backbone].label} {r.mode}: {TEXT_LABELS[r.text].split(':')[0]}" for r in rows
    ]
    means = [_mean_std(r.lifts)[0] for r in rows]
    stds = [_mean_std(r.lifts)[1] for r in rows]
    colors = {"din": "tab:blue", "deepfm": "tab:orange", "dcnv2": "tab:green"}
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))[::-1]
    for yi, r, m, sd in zip(y, rows, means, stds, strict=True):
        ax.barh(
            yi,
            m,
            xerr=sd,
            color=colors[r.backbone],
            hatch="//" if r.mode == "frozen" else None,
            edgecolor="white",
            capsize=3,
        )
        # Past the error bar's end, so the whisker never crosses the number.
        end, side = (m + sd, "left") if m >= 0 else (m - sd, "right")
        ax.text(end, yi, f" {m:+.4f} ", va="center", ha=side, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.margins(x=0.15)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("test AUC lift over the same backbone without KAR (mean ± std over seeds)")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
