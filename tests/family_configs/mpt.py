import transformers as T

# initializer_range=0.2: weights large enough that clip_qkv, the softmax scale and the ALiBi rounding
# change the logits by far more than the 1e-4 tolerance
COMMON = dict(vocab_size=256, n_layers=2, max_seq_len=128, initializer_range=0.2)


def mpt():  # no_bias=True (the default): LayerNorms and linear layers without bias; tied head
    return T.MptForCausalLM(T.MptConfig(**COMMON, d_model=64, n_heads=4))


def mpt_6_heads_clip_scale():  # non-power-of-two head count (interleaved slopes), clip_qkv, softmax_scale
    attn = {"clip_qkv": 0.5, "softmax_scale": 0.5}
    return T.MptForCausalLM(T.MptConfig(**COMMON, d_model=96, n_heads=6, attn_config=attn))


def mpt_untied_no_bias_false():  # transformers builds no biases even with no_bias=False
    config = T.MptConfig(**COMMON, d_model=64, n_heads=4, no_bias=False, tie_word_embeddings=False)
    return T.MptForCausalLM(config)


CASES = {f.__name__: f for f in (mpt, mpt_6_heads_clip_scale, mpt_untied_no_bias_false)}
