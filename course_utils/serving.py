"""The course's HTTP service: chapter 00's classifier behind FastAPI and uvicorn, on 127.0.0.1 (chapter 07).

Routes: `POST /predict` (one or many texts; server-side micro-batching with a bounded queue and a maximum wait),
`POST /explain` (word occlusion: how much the predicted class's probability drops without each word), `GET /health`
(open), `GET /metrics` (Prometheus text format), `GET /openapi.json` and `/docs`. Every route but /health needs the
API key (`Authorization: Bearer <key>`, compared in constant time; the service only knows the key's sha256). Every
response carries the model's version and sha256 (headers `x-model-version`, `x-model-sha256`; /predict also in the
body). The door: a body-size limit (413), a body that does not arrive in time (408), not JSON (415), not UTF-8 (400),
schema and bounds by pydantic (422, without echoing the input back), a full queue (503 with Retry-After), a request
over its time limit (504); an unexpected error is a 500 with a request id and no traceback. Request logs are JSON
lines with PII redacted by chapter 01's redactor; keys are never logged.

Started by `deploy.Service` (or `bash course serve`) as `python -m course_utils.serving CONFIG.json --port P`.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import sys
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .assets import sha256_of as sha256_file
from .cleaning import redact_pii

CONFIG_ENV = "TRUSTWORTHY_SERVICE_CONFIG"  # how uvicorn's worker processes find the config (not a course setting)
OPEN_PATHS = ("/health",)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceError(RuntimeError):
    """A reason the service refuses to start (bad config, missing or altered model file)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs; written as JSON by `deploy.Service`. The API key itself is never stored."""

    model_kind: str  # "onnx" (one .onnx file) or "torch" (a folder with config.json and model.safetensors)
    model_path: str
    model_sha256: str  # of the .onnx file, or of model.safetensors
    model_version: str
    tokenizer_path: str
    label_names: tuple[str, ...]
    key_sha256: str  # sha256 hex digest of the API key
    max_length: int = 64
    max_texts: int = 64
    max_chars: int = 2000
    max_body_bytes: int = 262_144
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 5.0
    model_batch: int = 16  # texts per model call inside a batch: sorted by length, then cut (less padding)
    max_queue: int = 256
    request_timeout_s: float = 10.0
    body_timeout_s: float = 5.0
    threads: int = 1
    log_path: str | None = None


def check_config(cfg: ServiceConfig) -> ServiceConfig:
    """Refuse a config that cannot serve, with one line that names the field."""
    if cfg.model_kind not in ("onnx", "torch"):
        raise ServiceError(f"model_kind must be 'onnx' or 'torch', got {cfg.model_kind!r}")
    for name in ("max_length", "max_texts", "max_chars", "max_body_bytes", "max_batch", "max_queue", "threads",
                 "model_batch"):  # fmt: skip
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ServiceError(f"{name} must be a positive integer, got {value!r}")
    for name in ("max_wait_ms", "request_timeout_s", "body_timeout_s"):
        if not getattr(cfg, name) >= 0:
            raise ServiceError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    if len(cfg.key_sha256) != 64 or len(cfg.label_names) < 2:
        raise ServiceError("key_sha256 must be a sha256 hex digest and label_names at least two names")
    return cfg


def read_config(path: Path) -> ServiceConfig:
    """A ServiceConfig from its JSON file (unknown or missing fields are a one-line error)."""
    raw = json.loads(Path(path).read_text())
    known = {f.name for f in fields(ServiceConfig)}
    if set(raw) - known:
        raise ServiceError(f"unknown config fields {sorted(set(raw) - known)} in {path}; allowed: {sorted(known)}")
    try:
        cfg = ServiceConfig(**{**raw, "label_names": tuple(raw.get("label_names", ()))})
    except TypeError as err:
        raise ServiceError(f"{path}: {err}") from None
    return check_config(cfg)


def write_config(cfg: ServiceConfig, path: Path) -> Path:
    """Write a config as JSON (0600: it names files and the key's digest)."""
    path = Path(path)
    path.write_text(json.dumps(asdict(check_config(cfg)), indent=1))
    path.chmod(0o600)
    return path


def weights_file(kind: str, path: Path) -> Path:
    """The file whose sha256 identifies the model: the .onnx file, or a torch folder's model.safetensors."""
    return Path(path) if kind == "onnx" else Path(path) / "model.safetensors"


def verify_model(cfg: ServiceConfig) -> Path:
    """The model's weights file, after checking it exists and its sha256 is the one the config names."""
    target = weights_file(cfg.model_kind, Path(cfg.model_path))
    if not target.is_file():
        raise ServiceError(f"model file {target} not found; export it again (deploy.prepare_models) or fix the path")
    found = sha256_file(target)
    if found != cfg.model_sha256:
        raise ServiceError(
            f"model file {target} has sha256 {found[:12]}..., expected {cfg.model_sha256[:12]}...: it was changed or "
            "corrupted; export it again with deploy.prepare_models"
        )
    return target


def load_runner(cfg: ServiceConfig):
    """A runner (ids and mask in, logits out) for the verified model, with the config's thread count."""
    from . import compression  # imported here: it loads torch and onnxruntime, which a config check does not need

    verify_model(cfg)
    if cfg.model_kind == "onnx":
        return compression.OrtRunner(Path(cfg.model_path), threads=cfg.threads)
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(cfg.threads)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model_path, use_safetensors=True)
    return compression.TorchRunner(model)


def key_matches(presented: str | None, key_sha256: str) -> bool:
    """True when the presented key hashes to the stored digest; compared in constant time (hmac.compare_digest)."""
    if not presented:
        return False
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
    return hmac.compare_digest(digest, key_sha256)


# ---------------------------------------------------------------- micro-batching


class Overloaded(RuntimeError):
    """The request queue is full."""


class MicroBatcher:
    """Collects texts from concurrent requests into one model call: a batch closes when it holds `max_batch` texts
    or `max_wait_s` after its first request arrived, whichever comes first; at most `max_queue` requests wait."""

    def __init__(self, predict, max_batch: int, max_wait_s: float, max_queue: int, executor: ThreadPoolExecutor):
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = executor
        self.sizes: list[int] = []  # texts per model call (the last 1,000)

    async def submit(self, texts: list[str]) -> np.ndarray:
        """Probabilities (N, C) for `texts`, computed in a shared batch; Overloaded when the queue is full."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self.queue.put_nowait((texts, future, loop.time()))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} requests are waiting") from None
        return await future

    async def _collect(self) -> list[tuple[list[str], asyncio.Future]]:
        """One batch: the first waiting request, then whatever arrives before the batch is full or `max_wait_s` has
        passed since that first request ARRIVED (requests that queued while the model was busy do not wait again)."""
        loop = asyncio.get_running_loop()
        texts, future, arrived = await self.queue.get()
        items, count, deadline = [(texts, future)], len(texts), arrived + self.max_wait_s
        while count < self.max_batch:
            left = deadline - loop.time()
            try:
                item = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item[:2])
            count += len(item[0])
        return [(texts, future) for texts, future in items if not future.done()]  # a cancelled client is skipped

    async def run(self) -> None:
        """Serve batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            texts = [t for batch, _ in items for t in batch]
            self.sizes = (self.sizes + [len(texts)])[-1000:]
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, texts)
            except Exception as err:  # the model failed: every waiting request gets the error, the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for batch, future in items:
                if not future.done():
                    future.set_result(probs[start : start + len(batch)])
                start += len(batch)


# ---------------------------------------------------------------- the app


def _json_reply(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error body {"detail": ...}."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware at the door: request id, API key, body size and arrival time, content type, UTF-8, model
    headers on every response, a JSON log line per request, and a 500 without traceback for anything unexpected."""

    def __init__(self, app, cfg: ServiceConfig, metrics: dict, log: logging.Logger):
        self.app, self.cfg, self.metrics, self.log = app, cfg, metrics, log
        self.model_headers = [
            (b"x-model-version", cfg.model_version.encode()),
            (b"x-model-sha256", cfg.model_sha256.encode()),
        ]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, rid, status = time.perf_counter(), uuid.uuid4().hex[:12], {"code": 0}

        async def send_marked(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode()), *self.model_headers]
            await send(message)

        scope.setdefault("state", {})["request_id"] = rid
        try:
            reply, body = await self._door(scope, receive)
            if reply is not None:
                await reply(scope, receive, send_marked)
            elif body is not None:
                await self.app(scope, _replay(body, receive), send_marked)
            else:
                status["code"] = 499
        except Exception:  # noqa: BLE001  the service must answer and keep running; the traceback goes to the log only
            self.log.error(json.dumps({"request_id": rid, "error": traceback.format_exc(limit=5)}))
            if status["code"] == 0:
                await _json_reply(500, f"internal error (request {rid}); see the service log")(
                    scope, receive, send_marked
                )
        finally:
            path = scope["path"] if scope["path"] in ROUTES else "other"
            elapsed = time.perf_counter() - started
            self.metrics["requests"].labels(path, str(status["code"])).inc()
            self.metrics["latency"].labels(path).observe(elapsed)
            self.log.info(
                json.dumps({"request_id": rid, "method": scope["method"], "path": scope["path"],
                            "status": status["code"], "ms": round(1000 * elapsed, 2)})
            )  # fmt: skip

    async def _door(self, scope, receive) -> tuple[JSONResponse | None, bytes | None]:
        """(a refusal, None) or (None, the whole body); (None, None) when the client left."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            token = auth[7:] if auth[:7].lower() == "bearer " else None
            if not key_matches(token, self.cfg.key_sha256):
                return _json_reply(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                                   {"www-authenticate": "Bearer"}), None  # fmt: skip
        limit = self.cfg.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _json_reply(413, f"request body of {declared} bytes is over the limit of {limit}"), None
        body = b""
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.cfg.body_timeout_s)
            except TimeoutError:
                return _json_reply(408, f"the request body did not arrive within {self.cfg.body_timeout_s:g} s"), None
            if message["type"] == "http.disconnect":
                return None, None  # the client left; logged as 499 (nginx's 'client closed request')
            body += message.get("body", b"")
            if len(body) > limit:
                return _json_reply(413, f"request body is over the limit of {limit} bytes"), None
            if not message.get("more_body", False):
                break
        if scope["method"] == "POST":
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _json_reply(415, "send the body as JSON with 'Content-Type: application/json'"), None
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as err:
                return _json_reply(
                    400, f"request body is not valid UTF-8 (byte {err.start}); encode text as UTF-8"
                ), None
        return None, body


def _replay(body: bytes, receive):
    """A receive() that hands the app the body already read, then passes on what the client sends next."""
    sent = {"done": False}

    async def replay():
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


ROUTES = ("/predict", "/explain", "/health", "/metrics", "/openapi.json", "/docs")


def _metrics(registry: CollectorRegistry) -> dict:
    """The service's Prometheus metrics, in its own registry."""
    return {
        "requests": Counter("requests", "Requests answered", ["path", "status"], registry=registry),
        "latency": Histogram("request_latency_seconds", "Time to answer", ["path"], registry=registry,
                             buckets=LATENCY_BUCKETS),
        "batch": Histogram("batch_size", "Texts per model call", registry=registry, buckets=BATCH_BUCKETS),
        "model": Histogram("model_call_seconds", "Time the model takes per call (tokenizing included)",
                           registry=registry, buckets=LATENCY_BUCKETS),
        "queue": Gauge("queue_depth", "Requests waiting for the model", registry=registry),
    }  # fmt: skip


def _logger(cfg: ServiceConfig) -> logging.Logger:
    """JSON lines to the config's log file (or stderr)."""
    log = logging.getLogger(f"course.service.{uuid.uuid4().hex[:6]}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(cfg.log_path) if cfg.log_path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    return log


def _request_models(cfg: ServiceConfig):
    """Pydantic request models with the config's bounds."""
    Text = Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_chars)]

    def not_blank(value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty or only whitespace; send at least one word")
        return value

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        texts: list[Text] = Field(min_length=1, max_length=cfg.max_texts, description="the texts to classify")

        @field_validator("texts")
        @classmethod
        def _texts(cls, values: list[str]) -> list[str]:
            return [not_blank(v) for v in values]

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        text: Text

        @field_validator("text")
        @classmethod
        def _text(cls, value: str) -> str:
            return not_blank(value)

    return PredictRequest, ExplainRequest


def create_app(cfg: ServiceConfig, runner=None, tokenizer=None) -> FastAPI:
    """The FastAPI app for one model; `runner` and `tokenizer` are loaded (and the model verified) when not given."""
    from . import compression  # the encode/predict helpers; torch and onnxruntime load with them

    check_config(cfg)
    if runner is None:
        runner = load_runner(cfg)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_path)
    registry, log = CollectorRegistry(), _logger(cfg)
    metrics = _metrics(registry)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    PredictRequest, ExplainRequest = _request_models(cfg)
    model_info = {"version": cfg.model_version, "sha256": cfg.model_sha256, "kind": cfg.model_kind}

    def predict(texts: list[str]) -> np.ndarray:
        metrics["batch"].observe(len(texts))
        with metrics["model"].time():
            return compression.predict_proba(runner, tokenizer, texts, cfg.max_length, batch_size=cfg.model_batch)

    batcher = MicroBatcher(predict, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue, executor)

    async def lifespan(app):
        task = asyncio.create_task(batcher.run()) if cfg.batching else None
        yield
        if task:
            task.cancel()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Trustworthy LLM course: sentiment service", version=cfg.model_version, lifespan=lifespan)

    async def probabilities(texts: list[str]) -> np.ndarray:
        if cfg.batching:
            metrics["queue"].set(batcher.queue.qsize())
            return await batcher.submit(texts)
        return await asyncio.get_running_loop().run_in_executor(executor, predict, texts)

    async def bounded(call):
        try:
            return await asyncio.wait_for(call, cfg.request_timeout_s)
        except TimeoutError:
            return _json_reply(504, f"the model did not answer within {cfg.request_timeout_s:g} s; retry later")
        except Overloaded as err:
            return _json_reply(503, f"service busy: {err}; retry later", {"retry-after": "1"})

    def log_texts(request: Request, texts: list[str]) -> None:
        redacted = [redact_pii(t[:200])[0] for t in texts[:3]]
        log.info(
            json.dumps({"request_id": request.scope["state"]["request_id"], "texts": len(texts), "sample": redacted})
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = [
            {"where": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "problem": e["msg"]}
            for e in err.errors()
        ]  # the input is not echoed back: it may be 10,000 characters or hold personal data
        return _json_reply(422, problems)

    @app.get("/health")
    async def health():
        """Open: is the service up, which model, how many requests wait."""
        return {"status": "ok", "model": model_info, "queue": batcher.queue.qsize(), "batching": cfg.batching}

    @app.post("/predict")
    async def predict_route(body: PredictRequest, request: Request):
        """Label and class probabilities for each text."""
        log_texts(request, body.texts)

        async def answer():
            probs = await probabilities(body.texts)
            rows = [
                {
                    "label": cfg.label_names[int(p.argmax())],
                    "probabilities": dict(zip(cfg.label_names, map(float, p), strict=True)),
                }
                for p in probs
            ]
            return {"predictions": rows, "model": model_info}

        return await bounded(answer())

    @app.post("/explain")
    async def explain_route(body: ExplainRequest, request: Request):
        """Word occlusion: the predicted class's probability with each word removed, subtracted from the full one."""
        log_texts(request, [body.text])
        words = body.text.split()
        variants = [body.text] + [" ".join(words[:i] + words[i + 1 :]) or "." for i in range(len(words))]

        async def answer():
            probs = await asyncio.get_running_loop().run_in_executor(executor, predict, variants)
            label = int(probs[0].argmax())
            scores = [float(probs[0, label] - p[label]) for p in probs[1:]]
            return {
                "label": cfg.label_names[label],
                "method": "occlusion",
                "words": words,
                "attribution": scores,
                "model": model_info,
            }

        return await bounded(answer())

    @app.get("/metrics")
    async def metrics_route():
        """Prometheus text format: requests by path and status, latency and batch-size histograms, queue depth."""
        metrics["queue"].set(batcher.queue.qsize())
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Guard(app, cfg, metrics, log)


def app_from_env():
    """uvicorn factory for worker processes: the config file named by TRUSTWORTHY_SERVICE_CONFIG."""
    return create_app(read_config(Path(os.environ[CONFIG_ENV])))


def main(argv: list[str] | None = None) -> int:
    """Verify the model, then serve on 127.0.0.1 until SIGTERM or Ctrl-C; a refusal is one line and exit code 2."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m course_utils.serving")
    parser.add_argument("config", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        cfg = read_config(args.config)
        verify_model(cfg)
        if args.workers < 1:
            raise ServiceError(f"--workers must be >= 1, got {args.workers}")
    except (ServiceError, OSError, ValueError) as err:
        print(f"service refused to start: {err}", file=sys.stderr, flush=True)
        return 2
    common = {"host": "127.0.0.1", "port": args.port, "log_level": "warning", "access_log": False,
              "timeout_graceful_shutdown": 5, "timeout_keep_alive": 5}  # fmt: skip
    if args.workers == 1:
        uvicorn.run(create_app(cfg), **common)
    else:
        os.environ[CONFIG_ENV] = str(args.config)
        uvicorn.run("course_utils.serving:app_from_env", factory=True, workers=args.workers, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
