"""Deployment (chapter 07): the files the service loads, the service as a child process, load and fault tests.

`prepare_models` writes chapter 00's classifier three ways (PyTorch fp32 safetensors, ONNX fp32, ONNX int8 dynamic;
chapter 04's ONNX export is reused when it is the same model), each with its sha256. `Service` starts
`course_utils.serving` on 127.0.0.1 with a fresh API key and stops it (and any worker it forked) on `stop()`, on
exit of the `with` block, or when Python exits. `load_test` sends a fixed number of requests at a fixed concurrency
to a loopback address only; `run_faults` sends the malformed, oversized, unauthenticated, slow and abandoned
requests of `FAULTS` and checks the documented status and that the service still answers afterwards.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from . import compression, modeling, processes, store
from .serving import ServiceConfig, sha256_file, weights_file, write_config

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEPLOY_VERSION = "deploy-v1"  # bump when the files prepare_models writes change
SAME_MODEL = 1e-2  # chapter 04's export is this model if no logit differs by more (another model: differences ~1)


@dataclass(frozen=True)
class ModelSpec:
    """One servable model file: its kind ('onnx' or 'torch'), path, sha256 and version, with its tokenizer."""

    name: str
    kind: str
    path: Path
    sha256: str
    version: str
    tokenizer_path: Path
    label_names: tuple[str, ...]


def _export_files(model, tokenizer, sample: tuple[np.ndarray, np.ndarray], folder: Path) -> None:
    """Write tokenizer/, torch/ (safetensors), model_fp32.onnx (chapter 04's when it matches) and model_int8.onnx."""
    tokenizer.save_pretrained(folder / "tokenizer")
    with modeling.quiet_transformers():
        model.save_pretrained(folder / "torch", safe_serialization=True)
    chapter04 = store.path("compression", "teacher_fp32.onnx")
    reused = False
    if chapter04.exists():
        try:
            runner = compression.OrtRunner(chapter04)
            compression.check_export(compression.TorchRunner(model), runner, sample, SAME_MODEL)
            shutil.copyfile(chapter04, folder / "model_fp32.onnx")
            reused = True
        except ValueError:  # chapter 04 exported another model (the other mode's): export this one
            pass
    if not reused:
        compression.export_onnx(model, folder / "model_fp32.onnx", sample)
    compression.quantize_onnx(folder / "model_fp32.onnx", folder / "model_int8.onnx", "dynamic")
    store.write_json(folder / "made.json", {"reused_chapter04_export": reused})


def prepare_models(
    fine_tuned: modeling.FineTuned, sample_texts: list[str], label_names: list[str] | None = None
) -> dict[str, ModelSpec]:
    """The three servable files of a fine-tuned classifier, written once per model (cache key: its weights and
    class names); `label_names` name the classes in the model's output order (default: the model config's)."""
    if not sample_texts:
        raise ValueError("sample_texts is empty; pass a few sentences to check the ONNX export on")
    model = fine_tuned.model.float().cpu().eval()
    labels = tuple(label_names) if label_names is not None else label_names_from(fine_tuned)
    if len(labels) != model.config.num_labels:
        raise ValueError(f"{len(labels)} label names for a model with {model.config.num_labels} classes; pass one each")
    key = store.key(DEPLOY_VERSION, model, labels)
    folder = store.path("deploy", key)
    if not (folder / "made.json").exists():
        sample = compression.encode(fine_tuned.tokenizer, sample_texts)
        store.write_dir(folder, lambda tmp: _export_files(model, fine_tuned.tokenizer, sample, tmp))
    files = {"torch_fp32": ("torch", folder / "torch"), "onnx_fp32": ("onnx", folder / "model_fp32.onnx"),
             "onnx_int8": ("onnx", folder / "model_int8.onnx")}  # fmt: skip
    specs = {}
    for name, (kind, path) in files.items():
        digest = sha256_file(weights_file(kind, path))
        specs[name] = ModelSpec(name, kind, path, digest, f"{name}-{digest[:8]}", folder / "tokenizer", labels)
    return specs


def reused_chapter04(spec: ModelSpec) -> bool:
    """Whether the ONNX fp32 file was chapter 04's export (True) or exported here (False)."""
    return json.loads((spec.tokenizer_path.parent / "made.json").read_text())["reused_chapter04_export"]


def label_names_from(fine_tuned: modeling.FineTuned) -> tuple[str, ...]:
    """The class names in the model's output order."""
    cfg = fine_tuned.model.config
    return tuple(cfg.id2label[i] for i in range(cfg.num_labels))


# ---------------------------------------------------------------- the service as a child process


class Service:
    """The course's HTTP service in a child process on 127.0.0.1, with a fresh API key; always stopped.

    Use `with Service(spec) as svc:` or call `svc.stop()`; Python's exit stops it too. `options` are ServiceConfig
    fields (batching, max_wait_ms, threads, max_chars, ...).
    """

    def __init__(self, spec: ModelSpec, workers: int = 1, port: int | None = None, timeout: float = 90.0, **options):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.spec, self.workers = spec, workers
        self.port = processes.check_port_free(port) if port is not None else processes.free_port()
        self.key = secrets.token_urlsafe(32)
        self.folder = Path(tempfile.mkdtemp(prefix="course-service-"))
        self.tag = uuid.uuid4().hex
        self.log_path = self.folder / "requests.log"
        self.config = ServiceConfig(
            model_kind=spec.kind, model_path=str(spec.path), model_sha256=spec.sha256, model_version=spec.version,
            tokenizer_path=str(spec.tokenizer_path), label_names=spec.label_names,
            key_sha256=hashlib.sha256(self.key.encode()).hexdigest(), log_path=str(self.log_path), **options,
        )  # fmt: skip
        write_config(self.config, self.folder / "service.json")
        atexit.register(self.stop)
        self.process = processes.start(
            [sys.executable, "-m", "course_utils.serving", str(self.folder / "service.json"), "--port", str(self.port),
             "--workers", str(workers)],
            {**os.environ, processes.TAG: self.tag, "PYTHONUNBUFFERED": "1"},
            self.folder / "service.out",
        )  # fmt: skip
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def _wait_healthy(self, timeout: float) -> None:
        """Until GET /health answers 200; a child that exits first raises its own one-line reason."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                lines = (self.folder / "service.out").read_text(errors="replace").strip().splitlines()
                reason = next(
                    (ln for ln in reversed(lines) if ln.startswith("service refused")), lines[-1] if lines else ""
                )
                raise RuntimeError(reason or f"the service exited with code {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the service did not answer /health within {timeout:g} s; see {self.folder}/service.out")

    def client(self, **kwargs) -> httpx.Client:
        """An httpx client for this service with the API key set."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def predict(self, texts: list[str]) -> dict:
        """POST /predict and return the JSON answer (an HTTP error raises)."""
        with self.client() as client:
            reply = client.post("/predict", json={"texts": list(texts)})
            reply.raise_for_status()
            return reply.json()

    def processes(self) -> list:
        """The processes this service started that are still running (the server and its workers)."""
        return processes.tagged_processes(self.tag)

    def stop(self) -> None:
        """Stop the server and every worker it forked, free the port, delete the folder (key digest, log)."""
        processes.stop_tagged(self.tag)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.stop)

    def request_log(self) -> list[dict]:
        """The JSON lines the service logged so far."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def refusal(spec: ModelSpec, **changes) -> str:
    """The one-line reason the service gives when it refuses to start with `spec` changed by `changes`."""
    try:
        Service(replace(spec, **changes), timeout=60).stop()
    except RuntimeError as err:
        return str(err)
    raise AssertionError("the service started; expected a refusal")


# ---------------------------------------------------------------- load test


def check_loopback(url: str) -> str:
    """Refuse any address that is not this machine: the load test must never hit someone else's server."""
    host = urlparse(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"load tests run on loopback only ({', '.join(LOOPBACK_HOSTS)}), got host {host!r}")
    return url


def summarise(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    """p50/p95/p99 latency in ms (linear interpolation) and throughput = answered requests / wall time."""
    if not latencies_s or wall_s <= 0:
        raise ValueError("summarise needs at least one latency and a positive wall time")
    p50, p95, p99 = np.percentile(np.asarray(latencies_s) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "rps": len(latencies_s) / wall_s}


async def _load(url: str, headers: dict, texts: list[str], concurrency: int, requests: int) -> dict:
    """Send `requests` POST /predict, at most `concurrency` at a time; latency of each, errors counted."""
    semaphore, latencies, statuses = asyncio.Semaphore(concurrency), [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60.0) as client:

        async def one(i: int) -> None:
            async with semaphore:
                start = time.perf_counter()
                reply = await client.post("/predict", json={"texts": [texts[i % len(texts)]]})
                statuses.append(reply.status_code)
                if reply.status_code == 200:
                    latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    return {**summarise(latencies, wall), "errors": sum(s != 200 for s in statuses), "wall_s": wall}


def _in_thread(coro):
    """Run a coroutine on a fresh event loop in a worker thread (a notebook's kernel already runs one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def load_test(service: Service, texts: list[str], concurrency: int, requests: int) -> dict:
    """A bounded load test on loopback: `requests` single-text requests, `concurrency` in flight; p50/p95/p99 ms,
    requests per second, errors, and from the service's /metrics the mean texts per model call and the share of
    the wall time the model was busy (after a warm-up of `concurrency` requests, which is not counted)."""
    check_loopback(service.url)
    for name, value in (("concurrency", concurrency), ("requests", requests)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
            raise ValueError(f"{name} must be an integer in 1..10000, got {value!r}")
    if not texts:
        raise ValueError("texts is empty; pass the sentences to send")
    _in_thread(_load(service.url, service.headers, texts, concurrency, min(concurrency, requests)))  # warm-up
    before = scrape(service)
    result = _in_thread(_load(service.url, service.headers, texts, concurrency, requests))
    after = scrape(service)
    calls, sent, busy = (
        after[k] - before.get(k, 0.0) for k in ("batch_size_count", "batch_size_sum", "model_call_seconds_sum")
    )
    return {"concurrency": concurrency, "requests": requests, **result, "mean_batch": sent / max(calls, 1),
            "model_busy": busy / result["wall_s"]}  # fmt: skip


def scrape(service: Service) -> dict[str, float]:
    """The service's /metrics as {sample name with labels: value} (parsed with prometheus_client's parser)."""
    with service.client() as client:
        text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


# ---------------------------------------------------------------- fault tests


def _raw(port: int, data: bytes, pause: float = 0.0, close_early: bool = False) -> tuple[int | None, str]:
    """Send raw bytes over a socket, optionally wait; (status, reply), or (None, "") when the client hangs up first."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if close_early:
            return None, ""
        time.sleep(pause)
        reply = sock.recv(65536).decode("latin-1")
    return (int(reply.split()[1]) if reply.startswith("HTTP/") else None), reply


def _request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 POST as bytes."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def fault_cases(service: Service) -> list[tuple[str, int | None, object]]:
    """(name, documented status, how to send it) for every fault chapter 07 tests; None: the client left first."""
    cfg, key = service.config, service.headers
    json_h = {**key, "Content-Type": "application/json"}

    def post(body: bytes | str, headers: dict | None = None, path: str = "/predict"):
        data = body.encode() if isinstance(body, str) else body

        def send(client: httpx.Client) -> tuple[int, str]:
            # a fresh request, not the client's: its default Authorization header would be merged in
            reply = httpx.post(service.url + path, content=data, headers=json_h if headers is None else headers)
            return reply.status_code, reply.text

        return send

    slow = _request("/predict", b'{"texts": ["a fine', {**json_h, "Content-Length": "30"})
    whole = _request("/predict", b'{"texts": ["ok"]}', {**json_h, "Content-Length": "17"})
    return [
        ("well-formed request", 200, post('{"texts": ["a fine film"]}')),
        ("malformed JSON", 422, post('{"texts": ["a fine film"')),
        ("wrong type (a number for texts)", 422, post('{"texts": 42}')),
        ("wrong type (a number in the list)", 422, post('{"texts": [42]}')),
        ("unknown field", 422, post('{"texts": ["ok"], "admin": true}')),
        ("empty list", 422, post('{"texts": []}')),
        ("empty text", 422, post('{"texts": [""]}')),
        ("whitespace-only text", 422, post('{"texts": ["   "]}')),
        (f"too many texts ({cfg.max_texts + 1})", 422, post(json.dumps({"texts": ["ok"] * (cfg.max_texts + 1)}))),
        ("10,000-character text", 422, post(json.dumps({"texts": ["word " * 2000]}))),
        ("oversize body (1 MB)", 413, post(json.dumps({"texts": ["x" * 1_000_000]}))),
        ("invalid UTF-8", 400, post(b'{"texts": ["caf\xe9 \xff"]}')),
        ("not JSON content type", 415, post('{"texts": ["ok"]}', {**key, "Content-Type": "text/plain"})),
        ("missing API key", 401, post('{"texts": ["ok"]}', {"Content-Type": "application/json"})),
        (
            "wrong API key",
            401,
            post('{"texts": ["ok"]}', {"Authorization": "Bearer no", "Content-Type": "application/json"}),
        ),
        ("explain: empty text", 422, post('{"text": ""}', path="/explain")),
        ("slow client (body never finishes)", 408, lambda c: _raw(service.port, slow, pause=cfg.body_timeout_s + 1)),
        ("client disconnects mid-body", None, lambda c: _raw(service.port, slow, close_early=True)),
        ("client disconnects before the answer", None, lambda c: _raw(service.port, whole, close_early=True)),
    ]


def run_faults(service: Service) -> pd.DataFrame:
    """Send every fault case; per case the documented and the returned status, whether the answer leaked a
    traceback, and whether GET /health and a real prediction still work right after."""
    rows = []
    with service.client() as client:
        for name, expected, send in fault_cases(service):
            got, text = send(client)
            healthy = client.get("/health").status_code == 200
            works = client.post("/predict", json={"texts": ["still here?"]}).status_code == 200
            leaked = "Traceback" in text or 'File "' in text
            rows.append(
                {
                    "case": name,
                    "expected": expected,
                    "got": got,
                    "as_documented": expected is None or expected == got,
                    "traceback": leaked,
                    "healthy_after": healthy and works,
                }
            )
    return pd.DataFrame(rows).astype({"expected": "Int64", "got": "Int64"})


# ---------------------------------------------------------------- `bash course serve`


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C, so the `with` block stops the service."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`bash course serve`: chapter 00's model behind the service on 127.0.0.1 until Ctrl-C, then stopped."""
    import argparse

    from . import config, data

    parser = argparse.ArgumentParser(prog="bash course serve", description=main.__doc__)
    parser.add_argument("--model", choices=["onnx_int8", "onnx_fp32", "torch_fp32"], default="onnx_int8")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="model threads per worker (default: cores / workers)")
    parser.add_argument("--no-batching", action="store_true", help="one model call per request")
    args = parser.parse_args(argv)
    config.setup(seed=123, verbose=False)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the service as Ctrl-C does
    splits = data.course_splits(own=False)  # chapter 07 serves the course's model (owndata.MOVIE_ONLY)
    fine_tuned = modeling.course_model(progress=True, splits=splits)
    spec = prepare_models(fine_tuned, list(splits.test["text"].head(8)), splits.label_names)[args.model]
    threads = args.threads or max(1, config.thread_count() // max(args.workers, 1))
    with Service(spec, workers=args.workers, port=args.port, threads=threads, batching=not args.no_batching) as service:
        print(f"serving {spec.version} on {service.url} ({args.workers} x {threads} threads); Ctrl-C stops it")
        print(f"API key for this run (not stored anywhere): {service.key}")
        print(f'try: curl -s -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
              f"-d '{{\"texts\": [\"a fine film\"]}}' {service.url}/predict")  # fmt: skip
        try:
            service.process.wait()
        except KeyboardInterrupt:
            print("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
