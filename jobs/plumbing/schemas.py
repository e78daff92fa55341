"""Arrow schemas of every Delta table the job writes: declared once, checked at each write.

Entity ids are strings in every table so generic datasets with non-numeric ids
fit without a cast. `kind` is "user" or "item"; a user's vector is its
reasoning vector, an item's its fact vector.
"""

from __future__ import annotations

import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")
VECTOR = pa.list_(pa.float32())
KINDS = ("user", "item")

# Which interactions a prompt covers and under which settings, so a later run can tell
# what its knowledge saw (refresh policy) and what it must not train on (adapt).
# Nullable in `knowledge`: rows written before these columns existed hold nulls.
WINDOW_FIELDS = [
    # "production" (latest interactions before as_of), "evaluation" (KAR's cut) or "item".
    pa.field("window", pa.string()),
    # The run's data cutoff: the prompt saw only interactions before it.
    pa.field("as_of", UTC_US),
    # The prompt covers the user's time-ordered interactions [.., history_end): a CTR
    # sample at position >= history_end is outside it. 0 for items.
    pa.field("history_end", pa.int32()),
    # Template, factor and model settings the fingerprint was salted with.
    pa.field("settings", pa.string()),
]

PROMPTS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        # Full user-turn text sent to the LLM (fixed instruction first, then the entity part).
        pa.field("prompt", pa.string(), nullable=False),
        # The entity-specific part (user: demographics + history; item: title line);
        # the encoder uses it for users (KAR: history part of the prompt + answer).
        pa.field("context", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("factor_version", pa.string(), nullable=False),
        pa.field("template_version", pa.string(), nullable=False),
        *[f.with_nullable(False) for f in WINDOW_FIELDS],
        pa.field("created_at", UTC_US, nullable=False),
    ]
)

KNOWLEDGE = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("factor_version", pa.string(), nullable=False),
        pa.field("template_version", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int32(), nullable=False),
        pa.field("output_tokens", pa.int32(), nullable=False),
        # "stop" (model ended its answer) or "length" (cut at max_new_tokens).
        pa.field("finish_reason", pa.string(), nullable=False),
        # Check of the kept answer: ok | empty | length | degenerate | refusal (jobs/llm/checks.py).
        pa.field("status", pa.string(), nullable=False),
        # LLM calls spent on this prompt (1 + retries of bad answers).
        pa.field("attempts", pa.int32(), nullable=False),
        # False: every attempt was bad (a status in generate.retry_statuses). The row only
        # records the failure; readers of an entity's current knowledge must skip it, so the
        # entity keeps its previous usable answer.
        pa.field("usable", pa.bool_(), nullable=False),
        # Oldest history items left out of the prompt to fit llm.max_model_len (0: none).
        pa.field("history_dropped", pa.int32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("generated_at", UTC_US, nullable=False),
        *WINDOW_FIELDS,
    ]
)

# Delta read filter for an entity's current knowledge: answers that failed every check are
# kept only as a record, so the latest *usable* row is the entity's knowledge.
USABLE_KNOWLEDGE = [("usable", "=", True)]

EMBEDDINGS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        # Fingerprint of the knowledge row this embedding was computed from.
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("encoder_model", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("embedding", VECTOR, nullable=False),
        pa.field("encoded_at", UTC_US, nullable=False),
    ]
)

VECTORS = pa.schema(
    [
        # One id per published version; the Delta version is the time-travel handle.
        pa.field("version_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("vector", VECTOR, nullable=False),
        # Provenance: which knowledge, encoder and LLM this vector came from.
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("llm_model", pa.string(), nullable=False),
        pa.field("encoder_model", pa.string(), nullable=False),
        pa.field("adaptor", pa.string(), nullable=False),
        # Hash of everything the adapt stage read; equal hash -> nothing to retrain.
        pa.field("input_fingerprint", pa.string(), nullable=False),
        pa.field("created_at", UTC_US, nullable=False),
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("rating", pa.float32(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        # Index of this interaction in the user's time-ordered history (>= the leakage cut n).
        pa.field("position", pa.int32(), nullable=False),
        # The most recent interactions before this one, oldest first.
        pa.field("history_item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("history_ratings", pa.list_(pa.float32()), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # "train" | "test" (by user)
    ]
)

# Side table of the CTR features' entity attributes (one row per value, so multi-valued
# genres need no list type): items' genre/year, users' demographics from the users file.
ATTRIBUTES = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("attribute", pa.string(), nullable=False),  # e.g. genre, year, age, gender
        pa.field("value", pa.string(), nullable=False),
    ]
)

# One row per generate run (alone or inside `kar run`): what it cost and what came out.
RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("command", pa.string(), nullable=False),  # "run" or the stage run alone
        pa.field("started_at", UTC_US, nullable=False),
        pa.field("finished_at", UTC_US, nullable=False),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        # Pending prompts this run was asked to answer (after --kind/--ids-file/--since).
        pa.field("prompts", pa.int64(), nullable=False),
        pa.field("prompts_generated", pa.int64(), nullable=False),
        # LLM requests including retries, and the tokens of all of them.
        pa.field("requests", pa.int64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        # Output tokens per second of generation (engine start excluded).
        pa.field("output_tokens_per_s", pa.float64(), nullable=False),
        pa.field("stage_seconds", pa.map_(pa.string(), pa.float64()), nullable=False),
        # Final status -> answers; unusable answers; prompts that lost history to fit.
        pa.field("statuses", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("unusable", pa.int64(), nullable=False),
        pa.field("history_truncated", pa.int64(), nullable=False),
        # GPU-hours these output tokens cost at generate.cluster_tokens_per_gpu_s.
        pa.field("cluster_tokens_per_gpu_s", pa.float64(), nullable=False),
        pa.field("gpu_hours", pa.float64(), nullable=False),
    ]
)

# One row per stage a run completed, with the versions of the tables it published together.
# Readers pin to the last completed stage's versions, so a stage killed between two of its
# commits (prompts written, samples not yet) is invisible until a run completes it.
STAGES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("versions", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("finished_at", UTC_US, nullable=False),
        # The run's data cutoff (run.as_of): a week whose prepare rewrote no table still
        # records it here. Null in rows of older releases.
        pa.field("as_of", UTC_US),
        # prepare: the prompts it found due. 0 lets generate ask nothing without reading the
        # queue, which prepare leaves unwritten when the last one is all answered. Null for
        # other stages and in rows of older releases.
        pa.field("prompts_due", pa.int64()),
    ]
)

# Feature-store offline tables, written by `kar publish` (not by a run, hence not in
# TABLES): one row per entity and published vectors version, keyed the way Feast's
# entities are; event_timestamp = the version's commit time.
USER_FEATURES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("reasoning", VECTOR, nullable=False),
        pa.field("vectors_version", pa.int64(), nullable=False),
        pa.field("event_timestamp", UTC_US, nullable=False),
    ]
)

ITEM_FEATURES = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("fact", VECTOR, nullable=False),
        pa.field("vectors_version", pa.int64(), nullable=False),
        pa.field("event_timestamp", UTC_US, nullable=False),
    ]
)

# The adaptor's leak-free training cohort (refresh.bootstrap_users): users chosen once, by
# a seeded draw, to get KAR's-cut prompt; a member whose answer stays unusable leaves
# ("left") and another user takes the slot. Written by prepare only when it changes.
COHORT = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),  # "member" | "left"
        pa.field("reason", pa.string()),  # why a user left: "unusable"
        pa.field("run_id", pa.string(), nullable=False),  # the run that chose it, or it left
    ]
)

TABLES: dict[str, pa.Schema] = {
    "prompts": PROMPTS,
    "knowledge": KNOWLEDGE,
    "embeddings": EMBEDDINGS,
    "vectors": VECTORS,
    "samples": SAMPLES,
    "attributes": ATTRIBUTES,
    "cohort": COHORT,
    "runs": RUNS,
    "stages": STAGES,
}
