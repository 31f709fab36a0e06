"""Typed configuration: the app builder's arguments and every section they hold.

One pydantic model per concern. `AppConfig` is what `serve run serve_app.app:build_app key=value`
and the `args:` block of a Serve config file are validated into, so every knob has a type, a
default and a description in one place (the README's configuration table mirrors this file).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

DEFAULT_MODEL = "cross-encoder/nli-MiniLM2-L6-H768"
DEFAULT_TEMPLATE = "This example is {}."


class _Section(BaseModel):
    # A typo in a config key should fail loudly at deploy time, not be ignored.
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """Which NLI cross-encoder to load and how to run it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(DEFAULT_MODEL, description="Hugging Face hub id or local directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda when a GPU is visible to the replica."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto is float16 on cuda and float32 on cpu."
    )
    backend: Literal["torch", "int8"] = Field(
        "torch", description="int8 = dynamic int8 quantisation of Linear layers (CPU only)."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per replica; default = the replica's CPUs."
    )
    max_length: int | None = Field(
        None, ge=8, description="Token window per pair; default = the tokenizer's model_max_length."
    )


class BatchingConfig(_Section):
    """Cross-request dynamic batching (`@serve.batch`); live-tunable through `user_config`."""

    max_batch_tokens: int = Field(
        4096, ge=16, description="Token budget of one batch (sum of pair lengths)."
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0.0, le=5.0, description="How long a batch waits to fill once it has one pair."
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


class RateLimitPolicy(_Section):
    rate: float = Field(..., gt=0, description="Tokens added per second.")
    burst: float = Field(..., gt=0, description="Bucket capacity: the most one request can cost.")


class RateLimitConfig(_Section):
    """One token bucket per client, held in one actor every ingress replica consults."""

    enabled: bool = False
    default: RateLimitPolicy = RateLimitPolicy(rate=100.0, burst=200.0)
    overrides: dict[str, RateLimitPolicy] = Field(
        default_factory=dict, description="Per-client policies, keyed by API key name or address."
    )
    cost: Literal["pairs", "requests"] = "pairs"
    fail_mode: Literal["open", "closed"] = Field(
        "open", description="What to do when the limiter actor cannot be reached in time."
    )
    timeout_s: float = Field(0.25, gt=0, description="Bounded wait for the limiter actor.")


class WebhookConfig(_Section):
    secret: str | None = Field(
        None, description="whsec_... secret for Standard Webhooks signatures (or env ZSC_WEBHOOK_SECRET)."
    )
    timeout_s: float = Field(15.0, gt=0)
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Delay before each attempt; the first is normally 0.",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDRs exempt from the SSRF guard (e.g. 127.0.0.1 for local receivers).",
    )


class JobsConfig(_Section):
    enabled: bool = True
    db_path: str = Field("zsc_jobs.sqlite3", description="SQLite file of the job store.")
    chunk_texts: int = Field(64, ge=1, description="Texts per chunk a job sends to the Classifier.")
    max_parallel_chunks: int = Field(4, ge=1, description="Chunks in flight per job runner.")
    results_page_size: int = Field(1000, ge=1, description="Results per page of GET /v1/jobs/{id}.")
    webhook: WebhookConfig = WebhookConfig()


# A malformed hash is a deploy-time error, not a replica that cannot start.
KeyHash = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-fA-F]{64}$")]


class AuthConfig(_Section):
    """Optional API keys. Store hashes, never keys: `sha256:<hex>` or plain keys from the env."""

    api_key_hashes: dict[str, KeyHash] = Field(
        default_factory=dict,
        description="Key name -> 'sha256:<hex digest of the key>' (`zsc hash-key` prints one).",
    )
    api_keys_env: str = Field(
        "ZSC_API_KEYS", description="Env var with 'name:key,name2:key2' pairs, read at start."
    )


class DeploymentScale(_Section):
    num_replicas: int | Literal["auto"] = 1
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    graceful_shutdown_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long a stopping replica (scale-down, redeploy) may finish its in-flight "
        "requests before it is killed; cover the slowest request a full queue can hold.",
    )


class AppConfig(ModelConfig):
    """Arguments of `serve_app.app:build_app`: the model settings at top level (so
    `serve run serve_app.app:build_app model=DIR` works) plus one section per concern."""

    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    jobs: JobsConfig = JobsConfig()
    auth: AuthConfig = AuthConfig()
    classifier: DeploymentScale = DeploymentScale()
    ingress: DeploymentScale = DeploymentScale(num_cpus=0.25, max_ongoing_requests=256)

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must be a hub id or a local directory")
        return value.strip()

    @model_validator(mode="after")
    def _int8_is_cpu_only(self) -> "AppConfig":
        if self.backend == "int8" and self.device == "cuda":
            raise ValueError("backend=int8 runs on CPU only; use dtype=float16 on cuda")
        return self

    def model_settings(self) -> ModelConfig:
        return ModelConfig.model_validate(self.model_dump(include=set(ModelConfig.model_fields)))
