"""Job configuration: YAML in `conf/`, validated at load so a typo fails before any stage runs.

Every section forbids unknown keys; errors name the dotted path of the bad key.
Single keys are overridden from the command line as `section.key=value`
(the value is parsed as YAML, so `llm.max_new_tokens=16` gives an int).
"""

from __future__ import annotations

import codecs
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters.config import Backbone, TrainConf
from encoders import ENGINES, EncoderSettings
from jobs.llm.config import CheckSettings, LLMSettings, Status
from jobs.llm.engines import ENGINES as LLM_ENGINES
from jobs.plumbing import storage
from jobs.plumbing.errors import InputError
from jobs.plumbing.plugins import check_engine_name
from jobs.plumbing.storage import Location


class ConfigError(InputError):
    """A config file or override is invalid; the message names the key path and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConf(_Section):
    name: str = "local"
    # Where the tables, reports and models go: a path (made absolute when the config is
    # read, before any worker sees it) or an object-store URI (s3://, gs://, abfss://); see
    # jobs/plumbing/storage.py and the `storage` section.
    output_dir: str = "kar-output"
    # Node-local scratch: converted model checkpoints and other derived assets, reused across
    # runs. The one location that is always a plain path.
    cache_dir: Path = Path(".cache/kar")
    seed: int = 42
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # `kar maintain` (the weekly run's last step) deletes table files that no version younger
    # than this uses: time travel (`kar vectors --version`) reaches back this far.
    retain_hours: int = Field(default=168, ge=0)
    # The run's cutoff: interactions at or after it are ignored, as if the run happened then
    # (replays, backfills). None: now. A time without a zone is UTC.
    as_of: datetime | None = None

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir(cls, value: object) -> str:
        if not isinstance(value, str | PurePath):
            raise ValueError(f"expected a path, got {value!r}")
        where = storage.location(value)
        return where.local_path().as_posix() if where.is_local else where.uri

    @field_validator("as_of")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def cutoff(self) -> datetime:
        """`as_of`, or now when it is not set (read once per stage: the run's cutoff)."""
        return self.as_of or datetime.now(UTC)


class FileConf(_Section):
    """One generic input file: where it is, how it is encoded, and which column is which."""

    # A path, or any URI the cluster's Spark reads (s3a:// on EMR, gs://, abfss://): handed
    # to Spark untouched (a URI is not a path: s3a://b/x must not become s3a:/b/x).
    path: str
    format: Literal["csv", "parquet"] = "csv"
    delimiter: str = ","
    # How a quote is escaped inside a quoted field (csv): '"' doubles it (RFC 4180, what CSV
    # writers do); '\\' puts a backslash before it (Spark's default; Hive and MySQL exports).
    escape: Literal['"', "\\"] = '"'
    header: bool = True
    # The file's text encoding (csv); a byte that is not valid in it fails with its line named.
    encoding: str = "utf-8"
    # Our column name -> the file's column name.
    columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: object) -> str:
        if not isinstance(value, str | PurePath):
            raise ValueError(f"expected a path or URI, got {value!r}")
        return str(value)

    @field_validator("encoding")
    @classmethod
    def _spark_charset(cls, name: str) -> str:
        """Python's name for it (latin-1, utf8, ...) -> the one Spark's CSV reader takes."""
        try:
            canonical = codecs.lookup(name).name
        except LookupError:
            canonical = name
        if canonical not in _SPARK_CHARSETS:
            raise ValueError(
                f"encoding {name!r} is not one Spark reads; use one of "
                f"{sorted(set(_SPARK_CHARSETS.values()))} (latin-1 is iso-8859-1)"
            )
        return _SPARK_CHARSETS[canonical]


# Python codec name -> Spark charset name (the charsets Spark's CSV reader accepts).
_SPARK_CHARSETS = {
    "utf-8": "utf-8",
    "iso8859-1": "iso-8859-1",
    "ascii": "us-ascii",
    "utf-16": "utf-16",
    "utf-16-be": "utf-16be",
    "utf-16-le": "utf-16le",
    "utf-32": "utf-32",
}


class SampleConf(_Section):
    """Deterministic down-sampling for laptop-size runs: the most-rated items, then random users."""

    max_items: int | None = Field(default=None, gt=0)
    max_users: int | None = Field(default=None, gt=0)


class DataConf(_Section):
    format: Literal["movielens-100k", "movielens-1m", "generic"] = "movielens-100k"
    # Directory holding the raw MovieLens files (movielens-* formats).
    path: Path | None = Path("data/ml-100k")
    # Generic layout: one FileConf per table (users optional).
    interactions: FileConf | None = None
    items: FileConf | None = None
    users: FileConf | None = None
    sample: SampleConf = Field(default_factory=SampleConf)
    # Ratings outside [min, max] are an input error (a 500-star rating is a bug upstream).
    rating_scale: tuple[float, float] = (1.0, 5.0)
    # Interaction times: seconds or milliseconds since 1970; auto: milliseconds when the
    # largest value is past year 5138 in seconds (> 1e11), and the log says so.
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    # Times after now + this many days are an input error, as are zero and negative ones.
    max_future_days: float = Field(default=1.0, ge=0)

    @field_validator("rating_scale")
    @classmethod
    def _scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if scale[0] >= scale[1]:
            raise ValueError(f"rating_scale must be [min, max] with min < max, got {list(scale)}")
        return scale

    @model_validator(mode="after")
    def _inputs_present(self) -> DataConf:
        if self.format == "generic" and (self.interactions is None or self.items is None):
            raise ValueError(
                "data.format 'generic' needs data.interactions and data.items "
                "(each with path, format and columns)"
            )
        if self.format != "generic" and self.path is None:
            raise ValueError(f"data.format '{self.format}' needs data.path (the dataset directory)")
        return self


class PrepareConf(_Section):
    label_threshold: float = 3.0
    # Which interactions a user prompt lists (README, "Two history windows"):
    # production: the latest max_prompt_history before run.as_of (what the weekly run
    # publishes); evaluation: KAR's cut, the first n = min((len+1)//2, max_prompt_history).
    window: Literal["production", "evaluation"] = "production"
    max_prompt_history: int = Field(default=30, gt=0)
    test_fraction: float = Field(default=0.1, gt=0, lt=1)
    ctr_history_length: int = Field(default=10, gt=0)
    # Personal data is opt-in: the user attributes (users file columns) that may reach prompts,
    # `knowledge` and the CTR features. None by default; never list zip codes or free text.
    user_attributes: list[str] = Field(default_factory=list)
    # Ages reach prompts and features as ranges (25-34), not years.
    bucket_age: bool = True
    # Input text (titles, genres, attribute values) is cut at this many characters.
    max_text_chars: int = Field(default=200, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "include_demographics" in data:
            raise ValueError(
                "prepare.include_demographics was replaced by prepare.user_attributes, an "
                "allow-list: e.g. user_attributes: [age, gender, occupation] (KAR's MovieLens "
                "setting), or [] for none"
            )
        return data


class RefreshConf(_Section):
    """When a user's knowledge is regenerated in the production window (items: on any change).

    A user whose window changed is refreshed once it gained `min_new_interactions`
    interactions since its current knowledge, or once that knowledge is
    `max_age_days` old (by the data cutoffs, run.as_of); until then it is stale and
    keeps its knowledge. An unchanged window is fresh, whatever its age.
    """

    min_new_interactions: int = Field(default=5, gt=0)
    max_age_days: float = Field(default=28.0, gt=0)
    # The adaptor's leak-free training cohort: users chosen once (a seeded draw among those
    # with no knowledge that ended before their latest interaction) get KAR's-cut prompt,
    # so the adaptor has leak-free text to train on. At most this many members at any
    # time, kept in the `cohort` table; a member whose answer is still unusable after
    # generate's retries leaves and another user takes the slot. null: every such user
    # (small deployments), 0: none.
    bootstrap_users: int | None = Field(default=None, ge=0)


class SparkConf(_Section):
    master: str = "local[*]"
    driver_memory: str = "4g"
    conf: dict[str, str] = Field(default_factory=dict)


class FactorsConf(_Section):
    domain: str = "movies"
    # A reviewed factor YAML (e.g. from `kar factors discover`); default is the bundled set.
    file: Path | None = None


class LLMConf(LLMSettings):
    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        return check_engine_name(value, tuple(LLM_ENGINES))


class RayConf(_Section):
    # None starts a local Ray; "auto" or ray://host:port joins a cluster.
    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    # Set operations over Delta tables (pending prompts, each entity's current knowledge) run
    # as Ray Data shuffles, which cost seconds of fixed time (aggregator actors) however small
    # the input. Inputs of at most this many rows are joined in the driver with Arrow
    # instead (a bounded read). 0: always shuffle.
    local_rows: int = Field(default=50_000, ge=0)
    # A model pool (generate, encode) whose actors no live node can host (their node lost,
    # none with its GPUs or custom resources left) stops the stage after this many seconds
    # (exit 1, naming the lost node and the resource), instead of waiting forever.
    unschedulable_wait_s: float = Field(default=600, gt=0)


class PoolConf(_Section):
    """A pool of Ray actors: how many and what each one reserves."""

    num_actors: int = Field(default=1, gt=0)
    cpus_per_actor: float = Field(default=1, gt=0)
    gpus_per_actor: float = Field(default=0, ge=0)
    # Ray custom resources each actor reserves (e.g. {gpu_pool: 1}: only nodes started with
    # `ray start --resources '{"gpu_pool": 8}'` run the pool).
    resources: dict[str, float] = Field(default_factory=dict)
    torch_threads: int | None = Field(default=None, gt=0)
    # A dead actor (node lost, engine crash, OOM) is restarted and its batch retried this often.
    max_restarts: int = Field(default=2, ge=0)


class GenerateConf(PoolConf, CheckSettings):
    """The generate stage's actor pool plus its work sizing, answer checks and accounting."""

    # One engine call: prompts whose estimated prompt + answer tokens fit.
    batch_tokens: int = Field(default=32768, gt=0)
    # Batches queued per actor, so an engine never waits between batches.
    batches_in_flight: int = Field(default=2, gt=0)
    # Prompts per block: one actor call (sorted by length inside, so engine calls pad
    # little), one Parquet part of `knowledge`, one Delta commit, the most a kill loses.
    # A commit's cost grows with the table's files: large runs want large blocks.
    commit_rows: int = Field(default=256, gt=0)
    # Answers with one of these statuses are asked again (new seed), up to max_attempts in all.
    # `length` is not retried by default: a small llm.max_new_tokens would ask every prompt
    # max_attempts times and still store it cut.
    retry_statuses: list[Status] = Field(
        default_factory=lambda: ["empty", "echo", "degenerate", "refusal"]
    )
    max_attempts: int = Field(default=3, gt=0)
    # Sampling temperature of retries when llm.temperature is 0 (greedy would repeat the answer).
    retry_temperature: float = Field(default=0.7, gt=0)
    # Accounting: generated tokens per second one GPU of the production cluster sustains with
    # this model (measure it there with bench/generation.py); GPU-hours = output tokens / this.
    cluster_tokens_per_gpu_s: float = Field(default=2000.0, gt=0)


class EncoderConf(EncoderSettings):
    """The encode stage: the encoder (encoders.EncoderSettings) plus its commits and pool."""

    # Inputs per block: one actor call (the encoder batches by batch_size inside), one
    # Parquet part of `embeddings`, one Delta commit, the most a kill loses.
    commit_rows: int = Field(default=2048, gt=0)
    pool: PoolConf = Field(default_factory=PoolConf)

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        return check_engine_name(value, tuple(ENGINES))


TextVariant = Literal["kar", "user_only", "item_only", "no_llm", "answer_only"]


class GateConf(_Section):
    """Publish gate: a new vectors version must not score worse than the live one."""

    enabled: bool = True
    # Publish only if new AUC >= live AUC - tolerance (both scored on today's held-out users).
    tolerance: float = Field(default=0.005, ge=0)


class AdaptConf(TrainConf):
    """The adapt stage: training (adapters.config.TrainConf), its sample bound and the gate."""

    # Train (and gate) on at most this many CTR samples: a seeded sample of the prepared ones
    # when there are more, so adapt's memory is bounded however many users there are. The
    # default covers the embedded ML-100K run whole (not sampled).
    max_train_rows: int = Field(default=2_000_000, gt=0)
    gate: GateConf = Field(default_factory=GateConf)
    # The one Ray worker that trains (and gates): its CPUs, GPUs and custom resources, so
    # on a cluster it lands on a GPU node, not in the driver. Not a model input: changing
    # it retrains nothing (adapt's input fingerprint leaves it out).
    worker: PoolConf = Field(default_factory=PoolConf)

    @model_validator(mode="after")
    def _one_worker_on_its_device(self) -> AdaptConf:
        if self.worker.num_actors != 1:
            raise ValueError("adapt.worker.num_actors must be 1: one worker trains the adaptor")
        on_gpu = self.device.startswith("cuda")
        if on_gpu and not self.worker.gpus_per_actor:
            raise ValueError(
                f"adapt.device is {self.device!r} but adapt.worker.gpus_per_actor is 0: the "
                "worker would see no GPU; set adapt.worker.gpus_per_actor: 1"
            )
        if self.worker.gpus_per_actor and not on_gpu:
            raise ValueError(
                f"adapt.worker.gpus_per_actor is {self.worker.gpus_per_actor:g} but adapt.device "
                f"is {self.device!r}: the GPU would idle; set adapt.device: cuda"
            )
        return self


class EvaluateConf(_Section):
    """`kar evaluate`: {backbone} x {no KAR, co-trained, frozen} x seeds, plus text ablations."""

    backbones: list[Backbone] = Field(default_factory=lambda: ["din", "deepfm", "dcnv2"])
    # Each seed re-draws the 9:1 user split (prepare.test_fraction), validation slice and init.
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    # kar: user = history text + answer, item = answer (the method); user_only / item_only:
    # one tower of kar; no_llm: user = history text, item = title, year, genres (no LLM);
    # answer_only: user and item = the answer alone.
    texts: list[TextVariant] = Field(
        default_factory=lambda: ["kar", "user_only", "item_only", "no_llm", "answer_only"],
        min_length=1,
    )
    # frozen: vectors exported from the DIN-co-trained adaptor, fixed inputs of other backbones.
    modes: list[Literal["cotrained", "frozen"]] = Field(
        default_factory=lambda: ["cotrained", "frozen"], min_length=1
    )
    # Report, chart and per-seed results: a path or URI; default <run.output_dir>/evaluate.
    out_dir: str | None = None

    @field_validator("out_dir", mode="before")
    @classmethod
    def _out_dir(cls, value: object) -> str | None:
        return None if value is None else storage.location(str(value)).uri


class FeatureStoreConf(_Section):
    """Where `kar publish` serves vectors: a Feast feature repo and its online store."""

    # Feast feature repo (feature_store*.yaml + definitions); registry and SQLite file
    # live under run.output_dir/feast.
    repo: Path = Path("conf/feast")
    # Feast's registry.db and SQLite online store (local files on the node that publishes);
    # None: <run.output_dir>/feast, which needs a local run.output_dir.
    dir: Path | None = None
    online_store: Literal["sqlite", "redis"] = "sqlite"
    # Redis connection string "host:port[,password=...]" (online_store: redis).
    redis: str = "localhost:6379"
    # `kar publish` streams the vectors version in batches of this many rows (into the
    # offline feature tables' files and the online store), so its memory is bounded.
    batch_rows: int = Field(default=50_000, gt=0)


class ReportConf(_Section):
    """The run report (`kar run`'s end, `kar report`): one process, bounded reads."""

    # Per-entity figures (knowledge ages, vector norms, drift) come from a seeded sample of
    # about this many entities at most, the same entities in every version; a table with
    # fewer rows is read whole.
    max_entities: int = Field(default=200_000, gt=0)


class StorageConf(_Section):
    """How the job reaches run.output_dir when it is an object store.

    Credentials and endpoints come from each cloud SDK's environment (AWS_ENDPOINT_URL,
    AWS_REGION, AWS_ACCESS_KEY_ID/..., GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*);
    nothing here is needed for them.
    """

    # Non-secret object_store settings (the keys delta-rs and obstore share, e.g.
    # aws_endpoint, aws_region, aws_allow_http, google_bucket). A credential key is refused.
    options: dict[str, str] = Field(default_factory=dict)
    # The run lock on an object store: its holder renews it every third of this; a holder
    # silent this long (its node lost) is taken over with a warning. Local disks use flock.
    lock_lease_s: int = Field(default=300, ge=3)

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of settings, got {value!r}")
        return storage.check_options(value)


class Config(_Section):
    run: RunConf = Field(default_factory=RunConf)
    storage: StorageConf = Field(default_factory=StorageConf)
    data: DataConf = Field(default_factory=DataConf)
    prepare: PrepareConf = Field(default_factory=PrepareConf)
    refresh: RefreshConf = Field(default_factory=RefreshConf)
    spark: SparkConf = Field(default_factory=SparkConf)
    ray: RayConf = Field(default_factory=RayConf)
    factors: FactorsConf = Field(default_factory=FactorsConf)
    llm: LLMConf = Field(default_factory=LLMConf)
    generate: GenerateConf = Field(default_factory=GenerateConf)
    encoder: EncoderConf = Field(default_factory=EncoderConf)
    adapt: AdaptConf = Field(default_factory=AdaptConf)
    evaluate: EvaluateConf = Field(default_factory=EvaluateConf)
    feature_store: FeatureStoreConf = Field(default_factory=FeatureStoreConf)
    report: ReportConf = Field(default_factory=ReportConf)

    def output(self, *parts: str) -> Location:
        """A location under the run's output directory."""
        where = storage.location(self.run.output_dir, self.storage.options)
        for part in parts:
            where = where / part
        return where

    def location(self, uri: str) -> Location:
        """Any other location the user names (`kar join --out`, `--samples`), opened with
        storage.options like the run's own tables."""
        return storage.location(uri, self.storage.options)

    def table_path(self, name: str) -> Location:
        """Where Delta table `name` lives for this run's output directory."""
        return self.output("tables", name)

    def evaluate_cache(self) -> Path:
        """`kar evaluate`'s encoder outputs by text hash: node-local scratch under
        run.cache_dir, not an output (`kar forget` clears it: texts hold personal data)."""
        return self.run.cache_dir / "evaluate-encoder"

    def feast_dir(self) -> Path:
        """Feast's registry and SQLite online store: files on the publishing node's disk,
        feature_store.dir, by default <run.output_dir>/feast when that is a local path."""
        if self.feature_store.dir is not None:
            return self.feature_store.dir
        where = self.output("feast")
        if not where.is_local:
            raise ConfigError(
                f"run.output_dir {self.run.output_dir} is an object store: set "
                "feature_store.dir to a local directory for Feast's registry and online store"
            )
        return where.local_path()


# Keys earlier releases had: what to do with one found in a config.
REMOVED_KEYS = {
    "generate.batch_rows": "removed: an actor call is one block now; delete the key "
    "(generate.commit_rows sizes blocks)",
}


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden" and path in REMOVED_KEYS:
            lines.append(f"  {path}: {REMOVED_KEYS[path]}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (check the spelling; see conf/local.yaml)")
        elif path.startswith("storage.options"):  # may hold a secret: never echoed
            lines.append(f"  {path}: {e['msg']}")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", yaml-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when `path` is None), apply `key=value` overrides, validate."""
    tree: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} does not exist") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None
