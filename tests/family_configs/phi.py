import transformers as T


COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)


def phi():  # phi-2 style: default partial_rotary_factor 0.5
    return T.PhiForCausalLM(T.PhiConfig(**COMMON))


def phi_qk_layernorm_gqa():  # per-head q/k LayerNorm, GQA, 6 of 16 channels rotate
    cfg = T.PhiConfig(**COMMON, num_key_value_heads=2, qk_layernorm=True, partial_rotary_factor=0.4)
    return T.PhiForCausalLM(cfg)


CASES = {f.__name__: f for f in (phi, phi_qk_layernorm_gqa)}
