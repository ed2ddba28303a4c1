import transformers as T


COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)


def gpt_neox():  # parallel residual, default rotary_pct 0.25 (4 of 16 channels), biases, untied embed_out
    return T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**COMMON))


def gpt_neox_sequential_linear_rope():  # sequential residual, no attention bias, tied, half rotary, linear scaling
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0, "partial_rotary_factor": 0.5}
    cfg = T.GPTNeoXConfig(**COMMON, use_parallel_residual=False, attention_bias=False, rope_parameters=rope,
                          tie_word_embeddings=True)
    return T.GPTNeoXForCausalLM(cfg)


CASES = {f.__name__: f for f in (gpt_neox, gpt_neox_sequential_linear_rope)}
