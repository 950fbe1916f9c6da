import torch

from quantbench.bench import guard


def test_guard_passes_close_logits_and_fails_far_ones():
    ref = torch.randn(2, 8, 64)
    ok = guard.evaluate(ref + 0.01 * torch.randn_like(ref), ref, 0.95)
    assert ok.passed and ok.cosine_vs_dense > 0.99
    bad = guard.evaluate(torch.randn_like(ref), ref, 0.95)
    assert not bad.passed and "bound >= 0.95" in bad.message()


def test_fakequant_mismatch_fails_even_within_the_dense_bound():
    ref = torch.randn(4, 64)
    got = ref + 0.2 * torch.randn_like(ref)  # cosine ~0.98: inside the dense bound, not the fake-quant one
    result = guard.evaluate(got, ref, 0.95, fakequant_ref=ref)
    assert result.cosine_vs_dense > 0.95 and not result.passed


def test_non_finite_logits_never_pass():
    result = guard.GuardResult(float("nan"), None, 0.95, None, "non-finite logits")
    assert not result.passed and "non-finite" in result.message()


def test_outputs_without_hidden_states_fall_back_to_logits():
    """AutoAWQ's fused model returns no hidden states: the guard compares logits and says so."""
    ref = {"logits": torch.randn(2, 8, 32), "hidden": torch.randn(2, 8, 16), "hidden_layer": 2}
    got = {"logits": ref["logits"] + 0.01 * torch.randn_like(ref["logits"]), "hidden": None, "hidden_layer": None}
    result = guard.evaluate_outputs(got, ref, 0.95)
    assert result.compared == "logits" and result.passed and result.logits_cosine_vs_dense == result.cosine_vs_dense
    got_hidden = {**got, "hidden": ref["hidden"].clone(), "hidden_layer": 2}
    result = guard.evaluate_outputs(got_hidden, ref, 0.95, fakequant_ref=ref)
    assert result.compared == "hidden state after layer 2" and result.cosine_vs_fakequant > 0.9999
