import transformers as T

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128)


def llama():  # GQA
    return T.LlamaForCausalLM(T.LlamaConfig(**COMMON, num_key_value_heads=2))


def llama3_rope_scaling():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    return T.LlamaForCausalLM(T.LlamaConfig(**COMMON, num_key_value_heads=1, rope_parameters=rope,
                                            tie_word_embeddings=True))


def llama_linear_rope_bias():
    rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    return T.LlamaForCausalLM(T.LlamaConfig(**COMMON, rope_parameters=rope, attention_bias=True, mlp_bias=True))


def mistral():  # sliding window shorter than the test sequences
    return T.MistralForCausalLM(T.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=8))


def qwen2():
    return T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON, num_key_value_heads=2))


def qwen3():  # q/k RMSNorm per head, head size 32 (not hidden / heads), tied head
    return T.Qwen3ForCausalLM(T.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True))


CASES = {f.__name__: f for f in (llama, llama3_rope_scaling, llama_linear_rope_bias, mistral, qwen2, qwen3)}
