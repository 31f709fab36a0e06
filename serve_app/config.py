"""Typed configuration: the app builder's arguments and every section they hold.

One pydantic model per concern. `AppConfig` is what `serve run serve_app.app:build_app key=value`
and the `args:` block of a Serve config file are validated into, so every knob has a type, a
default and a description in one place (the README's configuration table mirrors this file).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve_app.core.defaults import DEFAULT_BI_ENCODER, DEFAULT_MODEL, DEFAULT_TEMPLATE
from serve_app.core.presets import PRESETS, ModelPreset, find_preset

__all__ = ["DEFAULT_BI_ENCODER", "DEFAULT_MODEL", "DEFAULT_TEMPLATE"]


class _Section(BaseModel):
    # A typo in a config key should fail loudly at deploy time, not be ignored.
    model_config = ConfigDict(extra="forbid")


class LabelMap(_Section):
    """Which of the model's outputs are entailment and contradiction (its config's id2label
    may call them LABEL_0, LABEL_1, ...)."""

    entailment: int = Field(..., ge=0, description="Output index of entailment.")
    contradiction: int | None = Field(
        None,
        ge=0,
        description="Output index of contradiction; optional for two-output models (the other "
        "output stands in).",
    )


_PRESET_NAMES = ", ".join(PRESETS)


class ModelConfig(_Section):
    """Which NLI cross-encoder to load and how to run it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        DEFAULT_MODEL,
        description=f"Hugging Face hub id, local directory, or a preset ({_PRESET_NAMES}): a "
        "pinned hub model with its label map and a default hypothesis template in its language.",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit); a preset brings its own."
    )
    label_map: LabelMap | None = Field(
        None,
        description="Output indices of entailment and contradiction, e.g. {entailment: 2, "
        "contradiction: 0}, for models whose config names its outputs LABEL_0, LABEL_1, ...; "
        "default: read from the config's id2label.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda when a GPU is visible to the replica."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="auto is float32 on cpu; on cuda bfloat16 where the GPU supports it, else "
        "float16. A half-precision batch with non-finite logits (fp16 overflow) runs again in "
        "float32 (metric zsc_float32_reruns).",
    )
    backend: Literal["torch", "int8", "onnx"] = Field(
        "torch",
        description="torch; int8 = torch with dynamic int8 quantisation of Linear layers (CPU "
        "only); onnx = ONNX Runtime on `onnx_file` (the `onnx` extra; never imports torch).",
    )
    onnx_file: str = Field(
        "onnx/model.onnx",
        description="With backend=onnx: the file inside the model directory or hub repo, as "
        "the hub lays them out (onnx/model.onnx, onnx/model_qint8_avx512_vnni.onnx, ...); "
        "falls back to model.onnx at the top. `zsc export onnx` writes them.",
    )
    # Thread placement (serve_app/engine/threads.py: thread_plan). On CPU the default runs one
    # thread per sub-batch and as many sub-batches at once as the replica has CPUs: small
    # single-threaded forwards beat one multi-threaded forward on this model.
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads per forward (torch or ONNX Runtime); default 1 on CPU "
        "(forward_workers sub-batches run at once instead), or the CPUs divided by "
        "forward_workers when that is given.",
    )
    forward_workers: int | None = Field(
        None,
        ge=1,
        description="Sub-batches a replica runs at once on CPU; default = the replica's CPUs "
        "divided by torch_threads.",
    )
    forward_tokens: int | None = Field(
        None,
        ge=16,
        description="Padded tokens (longest pair x pairs) of one forward sub-batch; a batch is "
        "cut into length-sorted sub-batches of this size (with forward_workers > 1, re-cut into "
        "runs of equal tokens per worker, which may exceed it). Default 512 on CPU (less "
        "padding, same speed per token), 16384 on GPU.",
    )
    result_cache_entries: int = Field(
        0,
        ge=0,
        description="LRU cache of model outputs keyed by (model, hypothesis, text, label), in "
        "entries (~200 bytes each); 0 = off. Repeated pairs then skip the model.",
    )
    max_length: int | None = Field(
        None,
        ge=8,
        description="Token window per pair, at most what the model takes: the window is the "
        "smallest of this, the tokenizer's model_max_length and the model's usable positions "
        "(512 of RoBERTa's 514).",
    )

    # The preset `model` named, once resolved (model then holds its hub id).
    _preset: ModelPreset | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve_preset(self) -> ModelConfig:
        preset = find_preset(self.model)
        if preset is None:
            return self
        # Given explicitly beside the preset, revision and label_map win over the preset's.
        given = self.model_fields_set
        self.model = preset.model
        if "revision" not in given:
            self.revision = preset.revision
        if "label_map" not in given:
            self.label_map = LabelMap.model_validate(preset.label_map())
        self._preset = preset
        return self

    @property
    def preset(self) -> str | None:
        """The preset `model` named, or None for a hub id or a directory."""
        return self._preset.name if self._preset is not None else None

    @property
    def default_hypothesis_template(self) -> str:
        """The template of requests that give none: the preset's, else the pipeline's."""
        return self._preset.hypothesis_template if self._preset is not None else DEFAULT_TEMPLATE

    def label_indices_map(self) -> dict[str, int | None] | None:
        """`label_map` as the mapping `core.nli.nli_label_indices` takes."""
        return self.label_map.model_dump() if self.label_map is not None else None


class BatchingConfig(_Section):
    """Cross-request dynamic batching (`@serve.batch`); live-tunable through `user_config`."""

    # The model cuts a batch into small length-sorted sub-batches (ModelConfig.forward_tokens);
    # the more pairs a batch holds, the closer in length each sub-batch's pairs are and the
    # less it pads: 8192 tokens (~60 pairs) ran ~3% faster than 4096 under 64 HTTP clients here.
    max_batch_tokens: int = Field(
        8192, ge=16, description="Token budget of one batch (sum of pair lengths)."
    )
    # 0 on CPU: the forward blocks the replica's loop (serve_app/classifier.py), so whatever
    # arrived during one forward is queued together when it ends and the next batch takes it
    # all without waiting; batch size barely changes CPU throughput (bench sweep), and an idle
    # request should not wait for company. On a GPU, where batching is what pays, set ~5 ms.
    batch_wait_timeout_s: float = Field(
        0.0, ge=0.0, le=5.0, description="How long a batch waits to fill once it has one pair."
    )


class LimitsConfig(_Section):
    """Per-request bounds; each breach is a 4xx that names the limit."""

    max_texts: int = Field(256, ge=1, description="Texts in one /v1/classify request.")
    max_labels: int = Field(64, ge=1, description="Labels in one request.")
    max_pairs: int = Field(4096, ge=1, description="texts x labels in one /v1/classify request.")
    max_text_chars: int = Field(20_000, ge=1, description="Characters in one text.")
    max_label_chars: int = Field(200, ge=1, description="Characters in one label.")
    max_template_chars: int = Field(500, ge=3, description="Characters in the hypothesis template.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="HTTP request body size.")
    max_json_depth: int = Field(16, ge=4, description="Nesting depth of a JSON body.")
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a client may take to send its request body; slower is a 408, so "
        "a slow-loris client cannot hold an ingress slot.",
    )
    max_job_texts: int = Field(100_000, ge=1, description="Texts in one /v1/jobs submission.")
    max_prefilter_labels: int = Field(
        10_000,
        ge=1,
        description="Labels in one request that uses the prefilter (max_labels bounds the rest).",
    )
    max_chunks: int = Field(
        16,
        ge=1,
        description="Windows per text with long_text=chunk; a text needing more is a 413. A "
        "chunked request is charged (max_pairs, rate limit) as if each text used this many.",
    )


class RequestDefaults(_Section):
    """What a request gets for each field it leaves out (or sends as null)."""

    hypothesis_template: str | None = Field(
        None,
        description="NLI hypothesis with one {} for the label; unset = the model's default "
        f"template ({DEFAULT_TEMPLATE!r}).",
    )
    multi_label: bool = Field(False, description="Score each label on its own.")
    long_text: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="truncate: cut a text to the model's window (the pipeline's behaviour); "
        "chunk: score it in overlapping windows and combine them.",
    )
    chunk_stride: int = Field(
        0, ge=0, description="Tokens of overlap between a text's windows with long_text=chunk."
    )
    chunk_aggregate: Literal["max", "mean"] = Field(
        "max", description="How a label's scores over a text's windows are combined."
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Score from which a label is `predicted`; unset = no `predicted` field.",
    )

    @field_validator("hypothesis_template")
    @classmethod
    def _one_slot(cls, value: str | None) -> str | None:
        if value is not None and value.count("{}") != 1:
            raise ValueError("defaults.hypothesis_template must contain exactly one '{}'")
        return value


class RateLimitPolicy(_Section):
    rate: float = Field(..., gt=0, description="Tokens added per second.")
    burst: float = Field(..., gt=0, description="Bucket capacity: the most one request can cost.")


class RateLimitConfig(_Section):
    """One token bucket per client, held in limiter actors every ingress replica consults."""

    enabled: bool = False
    default: RateLimitPolicy = RateLimitPolicy(rate=100.0, burst=200.0)
    overrides: dict[str, RateLimitPolicy] = Field(
        default_factory=dict, description="Per-client policies, keyed by API key name or address."
    )
    cost: Literal["pairs", "requests"] = Field(
        "pairs",
        description="What a request (or job chunk) costs: pairs = its text x label pairs, "
        "requests = 1.",
    )
    fail_mode: Literal["open", "closed"] = Field(
        "open",
        description="What to do when a client's limiter shard cannot be reached in time: open "
        "admits unlimited, closed answers 503 with Retry-After.",
    )
    timeout_s: float = Field(
        0.25, gt=0, description="Bounded wait for a limiter shard's answer, queueing included."
    )
    shards: int = Field(
        1,
        ge=1,
        le=64,
        description="Limiter actors; each client key lives in exactly one (a stable hash), so "
        "the limit stays exact per key while the actors share the load.",
    )
    coalesce_window_s: float = Field(
        0.001,
        ge=0,
        le=1.0,
        description="Coalescing: each replica sends a shard at most one call at a time and one "
        "per window; admissions arriving meanwhile go out as one call, decided in order. A lone "
        "admission with nothing in flight goes out at once. 0: coalesce only behind a call in "
        "flight.",
    )


class WebhookConfig(_Section):
    secret: SecretStr | None = Field(
        None,
        description="whsec_... secret for Standard Webhooks signatures (or env ZSC_WEBHOOK_SECRET).",
    )
    timeout_s: float = Field(15.0, gt=0)
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="Delay before each attempt; the first is normally 0.",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDRs exempt from the SSRF guard (e.g. 127.0.0.1 for local receivers).",
    )
    tenant_secrets: dict[str, list[SecretStr]] = Field(
        default_factory=dict,
        description="API key name -> its own whsec_ secrets, newest first: during a rotation "
        "list [new, old] and every delivery carries both signatures; then drop the old one. "
        "Tenants not listed use `secret`.",
    )

    @field_validator("tenant_secrets")
    @classmethod
    def _secrets_well_formed(cls, value: dict[str, list[SecretStr]]) -> dict[str, list[SecretStr]]:
        import base64
        import binascii

        for name, secrets in value.items():
            if not secrets:
                raise ValueError(f"tenant_secrets.{name} lists no secret")
            for secret in secrets:
                raw = secret.get_secret_value()
                try:
                    base64.b64decode(raw.removeprefix("whsec_"), validate=True)
                except binascii.Error:
                    raise ValueError(
                        f"tenant_secrets.{name}: a webhook secret is 'whsec_' followed by base64"
                    ) from None
        return value


DEFAULT_SQLITE_PATH = "zsc_jobs.sqlite3"


class JobsConfig(_Section):
    enabled: bool = True
    store: SecretStr | None = Field(
        None,
        description="Job store URL: sqlite:///PATH (embedded, one runner on the head node; "
        "the default sqlite:///zsc_jobs.sqlite3) or postgresql://USER@HOST/DB (any node, "
        "several runners). Env ZSC_JOBS_STORE, read by the runner, overrides it (keep "
        "passwords there, from a Secret).",
    )
    db_path: str | None = Field(
        None, description="Deprecated: the SQLite file; same as store: sqlite:///PATH."
    )
    runners: int = Field(
        1, ge=1, description="JobRunner replicas (more than 1 needs a PostgreSQL store)."
    )
    lease_s: float = Field(
        20.0,
        gt=0,
        description="A chunk's lease: renewed every third of it while a runner works on the "
        "chunk; a runner that dies frees its chunks this long after its last renewal.",
    )
    chunk_texts: int = Field(64, ge=1, description="Texts per chunk a job sends to the Classifier.")
    max_parallel_chunks: int = Field(4, ge=1, description="Chunks in flight per job runner.")
    results_page_size: int = Field(1000, ge=1, description="Results per page of GET /v1/jobs/{id}.")
    max_active_per_tenant: int | None = Field(
        100,
        ge=1,
        description="Queued + running jobs one API key (tenant) may have; more answers 429. "
        "null: no limit.",
    )
    ttl_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Finished jobs and their results are deleted this long after they end; "
        "a fetch then answers 404 job_expired.",
    )
    max_store_bytes: int | None = Field(
        10 * 2**30,
        ge=1,
        description="Bound on what the store keeps (each job counted at its full size when "
        "submitted); a job that would pass it is refused with 413 job_store_full. null: none.",
    )
    sweep_batch: int = Field(
        100, ge=1, description="Expired jobs deleted per transaction by the sweeper."
    )
    webhook: WebhookConfig = WebhookConfig()

    @model_validator(mode="after")
    def _one_store(self) -> JobsConfig:
        if self.store is not None and self.db_path is not None:
            raise ValueError("jobs.store and jobs.db_path are exclusive; use jobs.store")
        return self

    @property
    def store_url(self) -> str:
        """The configured store (env ZSC_JOBS_STORE overrides it in the runner)."""
        if self.store is not None:
            return self.store.get_secret_value()
        return f"sqlite:///{self.db_path or DEFAULT_SQLITE_PATH}"


# A malformed hash is a deploy-time error, not a replica that cannot start.
KeyHash = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-fA-F]{64}$")]


class AuthConfig(_Section):
    """API keys. Store hashes, never keys: `sha256:<hex>` or plain keys from the env. Closed by
    default where reachable: a Serve HTTP bind other than loopback needs keys or `mode: none`."""

    mode: Literal["keys", "none"] | None = Field(
        None,
        description="keys: every /v1 call needs a key, and the app refuses to start without "
        "one; none: no keys, open to anyone who can reach the port (said in the log and in GET "
        "/v1/model); unset: keys when any is configured, else open on a loopback bind only (a "
        "bind to any other address refuses to start).",
    )

    api_key_hashes: dict[str, KeyHash] = Field(
        default_factory=dict,
        description="Key name -> 'sha256:<hex digest of the key>' (`zsc hash-key` prints one).",
    )
    api_keys_env: str = Field(
        "ZSC_API_KEYS", description="Env var with 'name:key,name2:key2' pairs, read at start."
    )

    @model_validator(mode="after")
    def _none_means_no_keys(self) -> AuthConfig:
        if self.mode == "none" and self.api_key_hashes:
            raise ValueError("auth.mode: none conflicts with auth.api_key_hashes; remove one")
        return self


class ServerSecrets(BaseSettings):
    """Secrets the server reads from its own environment (on Kubernetes, from Secrets), each
    `ZSC_<FIELD>`. Read where they are used, so they never travel in the app's config; held as
    `SecretStr`, so no repr or log shows them."""

    model_config = SettingsConfigDict(env_prefix="ZSC_", env_ignore_empty=True, extra="ignore")

    api_keys: SecretStr | None = Field(
        None, description="ZSC_API_KEYS: 'name:key,name2:key2' pairs, hashed at start."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="ZSC_WEBHOOK_SECRET: the whsec_ secret that signs job callbacks."
    )
    jobs_store: SecretStr | None = Field(
        None, description="ZSC_JOBS_STORE: the job store URL, over jobs.store."
    )

    def key_environ(self, auth: AuthConfig) -> dict[str, str]:
        """`{auth.api_keys_env: its value}` for `ApiKeys.from_config`: ZSC_API_KEYS from these
        settings, a variable of another name (`auth.api_keys_env`) from the environment."""
        name = auth.api_keys_env
        if name == "ZSC_API_KEYS":
            value = self.api_keys.get_secret_value() if self.api_keys is not None else ""
        else:
            value = os.environ.get(name, "")
        return {name: value} if value else {}


class TracingConfig(_Section):
    """Request traces over OTLP/HTTP (the `tracing` extra); off, OpenTelemetry is not imported."""

    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces; unset = "
        "no tracing. A caller's W3C traceparent header is honoured.",
    )
    service_name: str = Field("zsc", description="The service.name resource of every span.")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of new traces kept (a caller's decision wins)."
    )
    export_delay_ms: int = Field(
        2000, ge=10, description="Longest wait before finished spans are exported in a batch."
    )


class AutoscalingSettings(_Section):
    """Serve's request-based autoscaler for one deployment (its `autoscaling_config`)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle (0 scales to zero).")
    max_replicas: int = Field(4, ge=1, description="Upper bound under load.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at deploy time; default = min_replicas."
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests in flight (running + queued) each replica aims for."
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long load must stay high before replicas are added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long load must stay low before replicas are removed."
    )
    look_back_period_s: float = Field(
        30.0, gt=0, description="Window the ongoing-request metric is averaged over."
    )
    metrics_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often replicas and handles report their load to Serve's controller "
        "(deprecated by Serve in favour of env vars, still honoured by 2.60); keep it below "
        "look_back_period_s.",
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.max_replicas must be >= min_replicas")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                "autoscaling.initial_replicas must lie in [min_replicas, max_replicas]"
            )
        return self


class DeploymentScale(_Section):
    num_replicas: int | Literal["auto"] = 1
    autoscaling: AutoscalingSettings | None = Field(
        None,
        description="Scale between min and max replicas on load; num_replicas is then unused.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica.")
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica needs, which pins it to the nodes that "
        "offer them (e.g. {'gpu_a100': 1} or a resource given to `ray start --resources`).",
    )
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Requests each caller (ingress replica, job runner) may queue for this "
        "deployment beyond what its replicas hold (max_ongoing_requests each); more are refused "
        "at once with a 503 instead of waiting. -1 = unbounded.",
    )
    graceful_shutdown_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long a stopping replica (scale-down, redeploy) may finish its in-flight "
        "requests before it is killed; cover the slowest request a full queue can hold.",
    )

    @model_validator(mode="after")
    def _one_way_to_size(self) -> DeploymentScale:
        # Serve refuses a fixed num_replicas next to an autoscaling_config; say so at validation.
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                f"num_replicas={self.num_replicas!r} conflicts with autoscaling; remove one"
            )
        return self


class PrefilterConfig(_Section):
    """A bi-encoder in front of the cross-encoder: only the `top_k` labels most similar to a text
    are scored, so thousands of labels cost what `top_k` cost (README, "Thousands of labels")."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        None,
        description=f"sentence-transformers bi-encoder, hub id or local directory (e.g. "
        f"{DEFAULT_BI_ENCODER}); unset = no prefilter.",
    )
    revision: str | None = Field(None, description="Hub revision of the bi-encoder.")
    top_k: int = Field(
        20, ge=1, description="Labels per text the cross-encoder scores when a request has more."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="As for the cross-encoder.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto is float16 on cuda and float32 on cpu."
    )
    label_cache_entries: int = Field(
        100_000,
        ge=0,
        description="Label (hypothesis) embeddings kept per replica, ~1.5 KB each at 384 dims; "
        "a taxonomy sent again costs only its texts' embeddings.",
    )
    max_batch_texts: int = Field(
        64, ge=1, description="Texts embedded in one batch across concurrent requests."
    )
    batch_wait_timeout_s: float = Field(
        0.0, ge=0.0, le=5.0, description="How long a text batch waits to fill."
    )
    deployment: DeploymentScale = Field(
        default_factory=lambda: DeploymentScale(num_cpus=1.0),
        description="Replicas and resources of the bi-encoder's own deployment.",
    )

    @property
    def enabled(self) -> bool:
        return self.model is not None


class ClassifierScale(DeploymentScale):
    """The Classifier's deployment: its threads follow its CPUs (README, "Threads and CPUs")."""

    num_cpus: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(  # type: ignore[assignment]
        "auto",
        description="CPUs Ray reserves per replica; the model's threads x sub-batches follow "
        "them. auto = this machine's CPUs less what the ingress reserves: one replica using "
        "every core (the single-machine default; give a number on a cluster).",
    )
    # A backstop behind ingress.max_scoring_pairs (which sheds first) and the job runner's
    # bound: past it the ingress catches Serve's BackPressureError and answers its own JSON 503
    # with Retry-After (docs/OPERATIONS.md, "Overload"); it refuses a flood of tiny requests
    # that the pair bound would let through.
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="Requests each ingress replica (and the job runner) may queue for the "
        "Classifier beyond what its replicas hold (max_ongoing_requests each); more are "
        "answered 503 `overloaded` with Retry-After at once. -1 = unbounded.",
    )


class IngressScale(DeploymentScale):
    """The Ingress deployment: light (HTTP, validation, the limiter call), many requests each."""

    num_cpus: float = Field(0.25, ge=0, description="CPUs Ray reserves per replica.")
    # Overload is shed here, in zsc's JSON (docs/OPERATIONS.md, "Overload"): the pairs under
    # way are what an admitted request waits behind. 512 is one or two batches of
    # max_batch_tokens for short texts: ~0.2 s for the tiny model here, ~40 s for the full-size
    # model on this 2-core CPU (12.5 pairs/s), inside request_timeout_s. 256 halved admitted
    # latency at 4x load but refused bursts at 0.8x and a lone `zsc batch` client at its
    # defaults (docs/PERFORMANCE.md, "Overload"). Serve's queues count requests, not pairs.
    max_scoring_pairs: int = Field(
        512,
        ge=0,
        description="Pairs (texts x labels) one ingress replica may have in scoring at once; a "
        "request that would pass it is answered 503 `overloaded` with Retry-After at once (one "
        "request is always admitted when none is under way). Size it to a few batches of the "
        "Classifier replicas behind each ingress: what an admitted request may wait behind. "
        "0 = unbounded.",
    )
    # High, so the ingress (which answers in JSON) and not Serve's proxy (plain text) meets an
    # overflow: a refusal takes the ingress ~1 ms, so even a flood is refused as it arrives.
    max_ongoing_requests: int = Field(1024, ge=1)
    # Unbounded by default: an ingress overflow is answered by Serve's proxy, in plain text
    # (ray.serve._private.http_util), not in zsc's JSON envelope; the ingress refuses in JSON
    # itself (max_scoring_pairs), so the proxy should never need to.
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Requests the proxy may queue per ingress beyond max_ongoing_requests per "
        "replica; -1 = unbounded (the default: Serve's proxy answers this overflow in plain "
        "text, with Retry-After: 1; the ingress sheds load in JSON by max_scoring_pairs).",
    )


class AppConfig(ModelConfig):
    """Arguments of `serve_app.app:build_app`: the model settings at top level (so
    `serve run serve_app.app:build_app model=DIR` works) plus one section per concern."""

    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    defaults: RequestDefaults = Field(
        default_factory=RequestDefaults,
        description="Request fields a client leaves out take these values.",
    )
    rate_limit: RateLimitConfig = RateLimitConfig()
    jobs: JobsConfig = JobsConfig()
    auth: AuthConfig = AuthConfig()
    prefilter: PrefilterConfig = PrefilterConfig()
    classifier: ClassifierScale = ClassifierScale()
    ingress: IngressScale = IngressScale()
    check_placement: bool = Field(
        True,
        description="Refuse to start, naming the deployment, when a deployment's replicas "
        "cannot be placed on the cluster's nodes (checked against the nodes' totals at build "
        "and at ingress start). Turn off on a cluster that adds nodes on demand (autoscaler).",
    )
    health_timeout_s: float = Field(
        2.0,
        gt=0,
        description="GET /healthz answers 503 when a deployment (Classifier, Prefilter, "
        "JobRunner) has not answered within this long and has served nothing meanwhile.",
    )
    tracing: TracingConfig = TracingConfig()
    # Serve's proxy option of the same name cannot be set from an app's args, so the ingress
    # enforces it (serve_app/http/middleware/deadline.py); set `http_options.request_timeout_s`
    # in the Serve config to this value or above (docs/OPERATIONS.md, "Overload").
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of load balancers / proxies in front of Serve "
        "(e.g. ['10.0.0.0/8']). Only a hop from one of these may name the client in "
        "X-Forwarded-For or Forwarded; empty = the socket's peer is the client.",
    )
    request_timeout_s: float | None = Field(
        120.0,
        gt=0,
        description="Seconds one HTTP request may take, body included; later is a JSON 504 "
        "`timeout` with Retry-After (jobs are for longer work). null = no bound. Set Serve's "
        "http_options.request_timeout_s to this or above.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or CIDR network"
                ) from None
        return [entry.strip() for entry in value]

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                f"model must be a hub id, a local directory or a preset ({_PRESET_NAMES})"
            )
        return value.strip()

    @model_validator(mode="after")
    def _int8_is_cpu_only(self) -> AppConfig:
        if self.backend == "int8" and self.device == "cuda":
            raise ValueError("backend=int8 runs on CPU only; use dtype=float16 on cuda")
        return self

    def model_settings(self) -> ModelConfig:
        settings = ModelConfig.model_validate(
            self.model_dump(include=set(ModelConfig.model_fields))
        )
        settings._preset = self._preset  # already resolved: model holds the hub id
        return settings

    def request_defaults(self) -> RequestDefaults:
        """`defaults` with the template filled in: what a request's missing fields become."""
        template = self.defaults.hypothesis_template or self.default_hypothesis_template
        return self.defaults.model_copy(update={"hypothesis_template": template})

    @property
    def prefilter_top_k(self) -> int | None:
        """The prefilter's default k, or None when no prefilter is configured."""
        return self.prefilter.top_k if self.prefilter.enabled else None
