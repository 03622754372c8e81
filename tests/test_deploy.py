"""Chapter 07's service on a tiny random BERT exported to ONNX: each test names the bug it would catch.

One service is started for the module (and one with two workers); every test leaves no process and no port behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from test_compression import tiny_bert

from course_utils import compression, deploy, processes, serving, store

TEXTS = ["a fine film", "dull and long", "the best movie this year", "i want my money back", "not bad at all"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory, tokenizer):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        fine_tuned = SimpleNamespace(model=tiny_bert(), tokenizer=tokenizer)
        yield deploy.prepare_models(fine_tuned, TEXTS)


@pytest.fixture(scope="module")
def service(specs):
    with deploy.Service(specs["onnx_int8"], body_timeout_s=1.0, max_texts=8, max_wait_ms=20.0) as svc:
        yield svc
    assert processes.tagged_processes(svc.tag) == [] and not processes.port_is_listening(svc.port)


def test_prepared_files_have_the_checksums_the_specs_name(specs):
    for spec in specs.values():
        assert spec.sha256 == hashlib.sha256(serving.weights_file(spec.kind, spec.path).read_bytes()).hexdigest()
        assert spec.version.endswith(spec.sha256[:8])
    assert deploy.reused_chapter04(specs["onnx_fp32"]) is False  # the fresh cache has no chapter 04 export


def test_predictions_equal_the_model_run_directly_and_carry_the_model_identity(service, specs, tokenizer):
    """Catches: a batcher that hands one request another's rows, a missing softmax, a response without version."""
    with service.client() as client:
        reply = client.post("/predict", json={"texts": TEXTS})
    assert reply.status_code == 200
    assert reply.headers["x-model-sha256"] == specs["onnx_int8"].sha256 == reply.json()["model"]["sha256"]
    assert reply.headers["x-model-version"] == specs["onnx_int8"].version
    got = np.array([[p["probabilities"][n] for n in ("LABEL_0", "LABEL_1")] for p in reply.json()["predictions"]])
    direct = compression.predict_proba(compression.OrtRunner(specs["onnx_int8"].path), tokenizer, TEXTS)
    np.testing.assert_allclose(got, direct, atol=1e-5)


def test_every_fault_gets_its_documented_status_and_the_service_stays_healthy(service):
    table = deploy.run_faults(service)
    assert table["as_documented"].all(), table[~table["as_documented"]].to_dict("records")
    assert table["healthy_after"].all() and not table["traceback"].any()
    assert {401, 408, 413, 415, 400, 422} <= set(table["got"].dropna().astype(int))


def test_validation_errors_name_the_problem_without_echoing_the_input(service):
    with service.client() as client:
        reply = client.post("/predict", json={"texts": ["secret " * 500]})
    assert reply.status_code == 422
    problem = reply.json()["detail"][0]
    assert problem["where"] == "texts.0" and "2000 characters" in problem["problem"]
    assert "secret" not in reply.text  # FastAPI's default 422 body would echo the whole text back


def test_explain_is_the_probability_drop_without_each_word(service, specs, tokenizer):
    text = "a fine and moving film"
    with service.client() as client:
        answer = client.post("/explain", json={"text": text}).json()
    words = text.split()
    variants = [text] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    probs = compression.predict_proba(compression.OrtRunner(specs["onnx_int8"].path), tokenizer, variants)
    label = int(probs[0].argmax())
    assert answer["words"] == words and answer["method"] == "occlusion"
    np.testing.assert_allclose(answer["attribution"], probs[0, label] - probs[1:, label], atol=1e-5)


def test_concurrent_requests_share_model_calls_and_metrics_count_them(service):
    """Catches: a batcher that never merges (every batch 1), metrics that do not count."""
    before = deploy.scrape(service)
    result = deploy.load_test(service, TEXTS, concurrency=8, requests=48)
    after = deploy.scrape(service)
    assert result["errors"] == 0 and result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    calls = after["batch_size_count"] - before.get("batch_size_count", 0)
    texts = after["batch_size_sum"] - before.get("batch_size_sum", 0)
    assert texts == 48 + 8  # the warm-up requests too
    assert texts / calls > 1.5, "concurrent requests were not merged into shared model calls"
    assert after["requests_total{path=/predict,status=200}"] >= 56


def test_without_batching_every_model_call_is_one_request(specs):
    with deploy.Service(specs["onnx_int8"], batching=False) as svc:
        deploy.load_test(svc, TEXTS, concurrency=4, requests=12)
        metrics = deploy.scrape(svc)
    assert metrics["batch_size_sum"] == metrics["batch_size_count"] == 16


def test_keys_are_never_logged_and_personal_data_is_redacted(service):
    with service.client() as client:
        client.post("/predict", json={"texts": ["write to jane.doe@example.com about it"]})
    text = service.log_path.read_text()
    assert service.key not in text and "jane.doe@example.com" not in text and "[EMAIL]" in text


def test_unauthenticated_routes_are_only_health(service):
    for path in ("/metrics", "/openapi.json", "/docs"):
        assert httpx.get(service.url + path).status_code == 401, path
    assert httpx.get(service.url + "/health").status_code == 200
    with service.client() as client:
        assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_a_changed_or_missing_model_file_is_refused_at_start(specs, tmp_path):
    broken = tmp_path / "model.onnx"
    shutil.copyfile(specs["onnx_int8"].path, broken)
    with open(broken, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    reason = deploy.refusal(specs["onnx_int8"], path=broken)
    assert reason.startswith("service refused to start") and "sha256" in reason and "expected" in reason
    assert "not found" in deploy.refusal(specs["onnx_int8"], path=tmp_path / "gone.onnx")


def test_two_workers_serve_and_all_stop(specs):
    svc = deploy.Service(specs["torch_fp32"], workers=2)
    try:
        assert len(svc.processes()) >= 3  # uvicorn's supervisor and two workers
        assert svc.predict(TEXTS)["model"]["kind"] == "torch"
    finally:
        svc.stop()
    assert svc.processes() == [] and not processes.port_is_listening(svc.port)


def test_load_tests_refuse_other_hosts_and_bad_sizes(service):
    with pytest.raises(ValueError, match="loopback only"):
        deploy.check_loopback("http://example.com:8000")
    with pytest.raises(ValueError, match="concurrency must be an integer"):
        deploy.load_test(service, TEXTS, concurrency=0, requests=5)
    with pytest.raises(ValueError, match="texts is empty"):
        deploy.load_test(service, [], concurrency=1, requests=5)


def test_summarise_is_numpy_percentiles_and_answered_over_wall_time():
    lat = list(np.linspace(0.001, 0.1, 100))
    got = deploy.summarise(lat, wall_s=4.0)
    assert got["p95_ms"] == pytest.approx(np.percentile(lat, 95) * 1000) and got["rps"] == 25.0


def test_the_batcher_closes_a_batch_when_full_or_when_the_wait_ends():
    async def scenario():
        sizes = []

        def predict(texts):
            sizes.append(len(texts))
            return np.zeros((len(texts), 2))

        with serving.ThreadPoolExecutor(1) as pool:
            batcher = serving.MicroBatcher(predict, max_batch=4, max_wait_s=0.05, max_queue=100, executor=pool)
            task = asyncio.create_task(batcher.run())
            await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(10)))
            started = time.perf_counter()
            await batcher.submit(["alone"])  # nobody else comes: it waits max_wait_s, then runs alone
            waited = time.perf_counter() - started
            task.cancel()
        return sizes, waited

    sizes, waited = asyncio.run(scenario())
    assert sizes == [4, 4, 2, 1] and 0.04 <= waited < 0.5


def test_a_full_queue_is_refused_not_grown():
    async def scenario():
        with serving.ThreadPoolExecutor(1) as pool:
            batcher = serving.MicroBatcher(lambda t: np.zeros((len(t), 2)), 4, 0.01, max_queue=2, executor=pool)
            first = [asyncio.ensure_future(batcher.submit(["a"])) for _ in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(serving.Overloaded):
                await batcher.submit(["b"])
            for f in first:
                f.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_kind": "pickle"}, "model_kind must be 'onnx' or 'torch'"),
        ({"max_texts": 0}, "max_texts must be a positive integer"),
        ({"max_wait_ms": -1.0}, "max_wait_ms must be >= 0"),
    ],
)
def test_bad_service_settings_are_one_line_errors(service, change, message):
    with pytest.raises(serving.ServiceError, match=message):
        serving.check_config(serving.ServiceConfig(**{**service.config.__dict__, **change}))


def test_config_file_holds_no_key(service):
    raw = json.loads((service.folder / "service.json").read_text())
    assert service.key not in json.dumps(raw) and raw["key_sha256"] == hashlib.sha256(service.key.encode()).hexdigest()


def test_chapter_04_export_is_reused_only_for_the_same_model(tmp_path, monkeypatch, tokenizer):
    """Catches: serving chapter 04's file for a different model (the other mode's), or never reusing it."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    same = tiny_bert(seed=3)
    sample = compression.encode(tokenizer, TEXTS)
    compression.export_onnx(same, store.path("compression", "teacher_fp32.onnx"), sample)
    reused = deploy.prepare_models(SimpleNamespace(model=same, tokenizer=tokenizer), TEXTS)
    fresh = deploy.prepare_models(SimpleNamespace(model=tiny_bert(seed=4), tokenizer=tokenizer), TEXTS)
    assert deploy.reused_chapter04(reused["onnx_fp32"]) and not deploy.reused_chapter04(fresh["onnx_fp32"])
    assert reused["onnx_fp32"].sha256 != fresh["onnx_fp32"].sha256
