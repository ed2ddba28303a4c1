import transformers as T

# initializer_range=0.2: weights large enough that the bfloat16 rounding of Falcon-RW's ALiBi changes the
# logits by far more than the 1e-4 tolerance
COMMON = dict(vocab_size=256, num_hidden_layers=2, max_position_embeddings=128, initializer_range=0.2)


def falcon_7b_style():  # multi-query, parallel block with one shared input_layernorm, rotary
    return T.FalconForCausalLM(T.FalconConfig(**COMMON, hidden_size=64, num_attention_heads=4))


def falcon_new_arch():  # grouped KV heads in the [kv, q_per_kv + 2, hd] fused layout; ln_attn + ln_mlp
    return T.FalconForCausalLM(T.FalconConfig(**COMMON, hidden_size=64, num_attention_heads=8, num_kv_heads=2,
                                              new_decoder_architecture=True, ffn_hidden_size=112))


def falcon_new_arch_one_norm():  # Falcon-11B: new architecture with num_ln_in_parallel_attn=1, biases
    return T.FalconForCausalLM(T.FalconConfig(**COMMON, hidden_size=64, num_attention_heads=4, num_kv_heads=1,
                                              new_decoder_architecture=True, num_ln_in_parallel_attn=1,
                                              bias=True))


def falcon_rw_style():  # ALiBi (scaled, bfloat16) over 12 heads, sequential blocks, full MHA, biases
    return T.FalconForCausalLM(T.FalconConfig(**COMMON, hidden_size=96, num_attention_heads=12, alibi=True,
                                              parallel_attn=False, multi_query=False, bias=True))


CASES = {f.__name__: f for f in (falcon_7b_style, falcon_new_arch, falcon_new_arch_one_norm, falcon_rw_style)}
