import transformers as T



def codegen():  # 8 heads: two per qkv_proj shard; interleaved rotary on 4 of 8 channels
    cfg = T.CodeGenConfig(vocab_size=256, n_embd=64, n_layer=2, n_head=8, n_positions=128, rotary_dim=4,
                          bos_token_id=1, eos_token_id=2)
    return T.CodeGenForCausalLM(cfg)


CASES = {"codegen": codegen}
