import transformers as T

COMMON = dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)


def gpt2():  # gelu_new, n_inner = 4 * n_embd, tied head
    return T.GPT2LMHeadModel(T.GPT2Config(**COMMON))


def gpt2_layer_scaled_untied():  # per-layer 1/(i+1) attention scale, exact gelu, own lm_head
    return T.GPT2LMHeadModel(T.GPT2Config(**COMMON, n_inner=96, activation_function="gelu",
                                          scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False))


CASES = {f.__name__: f for f in (gpt2, gpt2_layer_scaled_untied)}
