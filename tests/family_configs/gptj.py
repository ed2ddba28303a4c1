import transformers as T


COMMON = dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2)


def gptj():  # interleaved rotary on 8 of 16 channels
    return T.GPTJForCausalLM(T.GPTJConfig(**COMMON, rotary_dim=8, n_inner=112))


CASES = {"gptj": gptj}
