import transformers as T

COMMON = dict(vocab_size=256, hidden_size=64, ffn_dim=112, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128)


def opt_125m_style():  # pre-LN with a final norm
    return T.OPTForCausalLM(T.OPTConfig(**COMMON))


def opt_350m_style():  # post-LN, no final norm, embeddings in a smaller space projected in and out
    return T.OPTForCausalLM(T.OPTConfig(**COMMON, do_layer_norm_before=False, word_embed_proj_dim=32))


CASES = {f.__name__: f for f in (opt_125m_style, opt_350m_style)}
