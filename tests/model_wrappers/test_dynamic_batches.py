"""With a length-dependent scaling (dynamic NTK), batching never changes what a request gets:
prompts of different lengths are not padded into one generation batch."""

import lm_eval

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM


def run_passkey(folder, scaling, monkeypatch) -> list:
    """The attention masks of every generation batch, and the generations."""
    extra = {"factor": 8} if scaling != "none" else {"max_length": 1024}
    lm = CtxHFLM(pretrained=str(folder), scaling=scaling, dtype="float32", device="cpu", batch_size=6, **extra)
    masks = []
    generate = lm._model_generate

    def spy(context, max_length, stop, **kwargs):
        masks.append(kwargs["attention_mask"].clone())
        return generate(context, max_length, stop, **kwargs)

    monkeypatch.setattr(lm, "_model_generate", spy)
    lm_eval.simple_evaluate(model=lm, tasks=["passkey_custom"], bootstrap_iters=0,
                            metadata={"pretrained": str(folder), "lengths": [300, 600], "num_samples": 3})
    return masks


def test_dynamic_ntk_generates_each_prompt_length_in_its_own_batches(tiny_model_dir, monkeypatch):
    masks = run_passkey(tiny_model_dir("llama"), "dynamic_ntk", monkeypatch)
    assert sorted(len(mask) for mask in masks) == [3, 3]
    assert all(bool(mask.all()) for mask in masks)  # no left padding: every prompt scaled for its own length


def test_static_methods_keep_lm_evals_batches(tiny_model_dir, monkeypatch):
    masks = run_passkey(tiny_model_dir("llama"), "yarn", monkeypatch)
    assert [len(mask) for mask in masks] == [6] and not bool(masks[0].all())  # one padded batch, as with hf
