"""XmodelLM against the independent reference: Hugging Face transformers' LlamaForCausalLM."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from model import LMConfig, XmodelLM, IGNORE_INDEX

transformers = pytest.importorskip("transformers")

# small, with GQA (4 query heads per KV head) and an odd vocab
CFG = dict(vocab_size=301, n_layer=2, n_head=8, n_kv_head=2, n_embd=64, intermediate_size=160,
           max_seq_len=128, rope_theta=10000.0, norm_eps=1e-5)


def random_llama(tmp_path, seed=0):
    """A randomly initialised transformers Llama, saved as a HF directory."""
    torch.manual_seed(seed)
    c = CFG
    hf_config = transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["n_embd"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["n_layer"], num_attention_heads=c["n_head"],
        num_key_value_heads=c["n_kv_head"], max_position_embeddings=c["max_seq_len"],
        rms_norm_eps=c["norm_eps"], rope_theta=c["rope_theta"], tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # HF initialises norms to ones; randomise them so they are tested too
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


def test_preset_parameter_count():
    with torch.device("meta"):
        model = XmodelLM(LMConfig.preset("xmodel-1.1b"))
    assert model.num_params() == 1_188_136_960


def test_from_hf_logits_match_transformers(tmp_path):
    hf, path = random_llama(tmp_path)
    ours = XmodelLM.from_hf(path).eval()
    idx = torch.randint(0, CFG["vocab_size"], (3, 37))
    with torch.no_grad():
        ref = hf(idx).logits
        logits, _ = ours(idx)
    assert (logits - ref).abs().max().item() < 1e-4


def test_loss_matches_transformers(tmp_path):
    hf, path = random_llama(tmp_path)
    ours = XmodelLM.from_hf(path).eval()
    idx = torch.randint(0, CFG["vocab_size"], (2, 20))
    labels = idx.clone()
    labels[:, :5] = IGNORE_INDEX                    # prompt positions without loss
    with torch.no_grad():
        ref = hf(idx, labels=labels).loss           # HF shifts labels internally
        targets = torch.cat([labels[:, 1:], torch.full((2, 1), IGNORE_INDEX)], dim=1)
        _, loss = ours(idx, targets)
    assert abs(loss.item() - ref.item()) < 1e-5


def test_greedy_generate_matches_transformers(tmp_path):
    hf, path = random_llama(tmp_path)
    ours = XmodelLM.from_hf(path).eval()
    idx = torch.randint(3, CFG["vocab_size"], (2, 9))
    ref = hf.generate(idx, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                      eos_token_id=None, pad_token_id=0)[:, 9:]
    assert torch.equal(ours.generate(idx, 20), ref)


def test_batched_generate_with_left_padding_matches_transformers(tmp_path):
    hf, path = random_llama(tmp_path)
    ours = XmodelLM.from_hf(path).eval()
    prompts = [[5, 17, 42, 99, 7, 8, 200], [11, 12, 13], [250, 3]]
    got = ours.generate(prompts, 12)
    for i, p in enumerate(prompts):  # reference: each prompt alone, no padding at all
        ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                          eos_token_id=None, pad_token_id=0)[0, len(p):]
        assert torch.equal(got[i], ref), f"prompt {i}"


def test_generate_stops_at_eos_and_pads(tmp_path):
    _, path = random_llama(tmp_path)
    ours = XmodelLM.from_hf(path).eval()
    idx = torch.randint(3, CFG["vocab_size"], (1, 6))
    free = ours.generate(idx, 10)[0]
    eos = int(free[3])                # pretend the 4th generated token is the end of sequence
    got = ours.generate(idx, 10, eos_id=eos, pad_id=0)[0]
    first = int((free == eos).nonzero()[0])
    assert torch.equal(got[:first + 1], free[:first + 1])
    assert len(got) == first + 1     # stopped as soon as every row was done


def test_save_hf_loads_in_transformers(tmp_path):
    torch.manual_seed(1)
    ours = XmodelLM(LMConfig(**CFG)).eval()
    ours.save_hf(tmp_path / "ours")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    idx = torch.randint(0, CFG["vocab_size"], (2, 30))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4


def test_released_xmodel_config_maps_to_preset():
    cfg_path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "xmodel", "Xmodel_LM.config.json")
    if not os.path.exists(cfg_path):
        pytest.skip("../shared/xmodel (the released Xmodel_LM config) is not beside this checkout")
    from model import config_from_hf
    got = config_from_hf(json.load(open(cfg_path)))
    want = LMConfig.preset("xmodel-1.1b")
    for k in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size",
              "rope_theta", "norm_eps"):
        assert getattr(got, k) == getattr(want, k), k


def test_wrong_checkpoint_names_keys(tmp_path):
    _, path = random_llama(tmp_path)
    cfg = json.load(open(path / "config.json"))
    cfg["intermediate_size"] = 96                  # config no longer matches the weights
    json.dump(cfg, open(path / "config.json", "w"))
    with pytest.raises(ValueError, match=r"shape mismatches.*mlp\.gate_proj"):
        XmodelLM.from_hf(path)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        XmodelLM.from_hf(tmp_path / "nope")


def test_kv_cache_equals_full_forward():
    """Decoding with the cache must give the logits a full forward gives at each position."""
    torch.manual_seed(0)
    model = XmodelLM(LMConfig(**CFG)).eval()
    idx = torch.randint(0, CFG["vocab_size"], (2, 12))
    new = model.generate(idx, 6)
    full = torch.cat([idx, new], dim=1)
    logits, _ = model(full)
    assert torch.equal(logits[:, 11:-1].argmax(-1), new)


def test_chunked_loss_equals_the_plain_loss_and_never_saves_all_logits():
    from model import chunked_cross_entropy
    g = torch.Generator().manual_seed(0)
    B, T, C, V = 3, 11, 16, 50                        # 33 rows: chunks of 7 leave a ragged 5
    x = torch.randn(B, T, C, generator=g, requires_grad=True)
    w = torch.randn(V, C, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :4] = IGNORE_INDEX                     # unlabelled positions (a prompt, padding)
    targets[2, -1] = IGNORE_INDEX
    plain = F.cross_entropy((x @ w.T).view(-1, V), targets.view(-1), ignore_index=IGNORE_INDEX)
    gx, gw = torch.autograd.grad(plain, (x, w))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = chunked_cross_entropy(x, w, targets, chunk=7)
    cx, cw = torch.autograd.grad(loss, (x, w))
    assert abs(loss.item() - plain.item()) < 1e-5
    assert torch.allclose(cx, gx, atol=1e-6) and torch.allclose(cw, gw, atol=1e-6)
    assert max(saved) < B * T * V / 2                  # never the (33, 50) logits, only inputs
    # through the model: the same loss as cross-entropy on its logits
    model = XmodelLM(LMConfig.preset("tiny", n_layer=1, n_embd=32, n_head=2, n_kv_head=1, vocab_size=V))
    idx = torch.randint(0, V, (2, 9), generator=g)
    logits, _ = model(idx[:, :-1])
    _, loss = model(idx[:, :-1], idx[:, 1:])
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, V), idx[:, 1:].reshape(-1)), atol=1e-6)


def test_cpu_attention_runs_in_fp32_under_autocast():
    """Under CPU bf16 autocast, model.attention computes in fp32 (the CPU kernel is slower in bf16)
    and hands back bf16: equal to an explicit fp32 softmax(q k^T / sqrt(d)) v of the same inputs,
    GQA and the causal triangle included, gradients too."""
    from model import attention
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 16).bfloat16().requires_grad_()
    k, v = (torch.randn(2, 2, 7, 16).bfloat16().requires_grad_() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(q, k, v, causal=True)
    assert y.dtype == torch.bfloat16
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    kk, vv = kf.repeat_interleave(2, dim=1), vf.repeat_interleave(2, dim=1)  # query head h reads kv head h // 2
    scores = qf @ kk.transpose(-1, -2) / 4.0
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    ref = scores.softmax(-1) @ vv
    # one rounding, at the end (within one bf16 step; computed in bf16, 176 of these 896 values differ, by up to 16%)
    torch.testing.assert_close(y.float(), ref.bfloat16().float(), atol=1e-6, rtol=2 ** -7)
    y.float().sum().backward()
    ref.sum().backward()
    for ours, theirs in ((q, qf), (k, kf), (v, vf)):
        torch.testing.assert_close(ours.grad.float(), theirs.grad, atol=2e-2, rtol=2e-2)
