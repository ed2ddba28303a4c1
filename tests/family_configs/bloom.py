import transformers as T

COMMON = dict(vocab_size=256, n_layer=2)


def bloom():
    return T.BloomForCausalLM(T.BloomConfig(**COMMON, hidden_size=64, n_head=4))


def bloom_6_heads():  # non-power-of-two head count: the interleaved extra ALiBi slopes
    return T.BloomForCausalLM(T.BloomConfig(**COMMON, hidden_size=96, n_head=6))


CASES = {f.__name__: f for f in (bloom, bloom_6_heads)}
