#!/usr/bin/env python3
"""Writes the hand-made seed inputs of tests/fuzz/corpus/<target>/seed-*.

The fuzzers grow each corpus from these (and from small shipped files); run this only to
regenerate the seeds, then merge the corpus again (README.md).
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- GGUF ------------------------------------------------------------------------------------
def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(v):
    """(type, payload) of a metadata value; a tuple (type, value) forces the type."""
    if isinstance(v, tuple):
        t, x = v
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 10: "<Q",
               11: "<q", 12: "<d"}[t]
        return t, struct.pack(fmt, x)
    if isinstance(v, bool):
        return 7, struct.pack("<B", v)
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, gguf_string(v)
    if isinstance(v, list):
        if v and isinstance(v[0], str):
            return 9, struct.pack("<IQ", 8, len(v)) + b"".join(gguf_string(x) for x in v)
        if v and isinstance(v[0], float):
            return 9, struct.pack("<IQ", 6, len(v)) + b"".join(struct.pack("<f", x) for x in v)
        return 9, struct.pack("<IQ", 5, len(v)) + b"".join(struct.pack("<i", x) for x in v)
    raise TypeError(v)


def gguf(metadata, tensors, alignment=32, version=3):
    """tensors: [(name, ggml_type, dims innermost first, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for k, v in metadata.items():
        t, payload = gguf_value(v)
        out += gguf_string(k) + struct.pack("<I", t) + payload
    offset = 0
    blobs = b""
    for name, ttype, dims, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, offset)
        pad = (-len(data)) % alignment
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    out += b"\0" * ((-len(out)) % alignment)
    return out + blobs


def f32(n, base=0.0):
    return b"".join(struct.pack("<f", base + i / 8) for i in range(n))


def seed_gguf():
    spm_tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + [
        "\u2581", "\u2581H", "e", "l", "o", "\u2581w", "r", "d", "ll", "\u2581He"]
    n = len(spm_tokens)
    types = [2, 3, 3] + [6] * 256 + [1] * (n - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    hidden, ffn, heads = 8, 16, 2
    llama = {
        "general.architecture": "llama",
        "general.name": "fuzz-tiny",
        "llama.context_length": 64,
        "llama.embedding_length": hidden,
        "llama.block_count": 1,
        "llama.feed_forward_length": ffn,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": 1,
        "llama.rope.dimension_count": hidden // heads,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": spm_tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": True,
    }
    q8 = struct.pack("<e", 0.5) + bytes(range(32))
    tensors = [
        ("token_embd.weight", 0, [hidden, 4], f32(hidden * 4)),
        ("output_norm.weight", 0, [hidden], f32(hidden, 1.0)),
        ("blk.0.attn_q.weight", 1, [hidden, hidden],
         b"".join(struct.pack("<e", i / 64) for i in range(hidden * hidden))),
        ("blk.0.ffn_up.weight", 8, [32, 1], q8),
        ("blk.0.ffn_down.weight", 30, [4, 2], bytes(range(16))),
    ]
    write("fuzz_gguf", "llama-spm.gguf", gguf(llama, tensors))
    # Only the tokenizer: a byte-level BPE vocabulary (GPT-2).
    bpe_tokens = ["!", "\"", "H", "e", "l", "o", "\u0120", "w", "r", "d", "ll", "He", "\u0120w",
                  "<|endoftext|>"]
    gpt2 = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": bpe_tokens,
        "tokenizer.ggml.token_type": [1] * (len(bpe_tokens) - 1) + [3],
        "tokenizer.ggml.merges": ["l l", "H e", "\u0120 w"],
        "tokenizer.ggml.bos_token_id": len(bpe_tokens) - 1,
        "tokenizer.ggml.eos_token_id": len(bpe_tokens) - 1,
    }
    write("fuzz_gguf", "gpt2-vocab.gguf", gguf(gpt2, []))
    # Wider integer and float types, a non-default alignment, GGUF v2.
    typed = {
        "general.alignment": (4, 64),
        "a.u8": (0, 7), "a.i8": (1, -7), "a.u16": (2, 700), "a.i16": (3, -700),
        "a.u64": (10, 1 << 40), "a.i64": (11, -(1 << 40)), "a.f64": (12, 0.1),
    }
    write("fuzz_gguf", "typed-v2.gguf",
          gguf(typed, [("t", 0, [2, 2, 2], f32(8))], alignment=64, version=2))


# ---- safetensors -------------------------------------------------------------------------------
def safetensors(entries, metadata=None):
    header = {}
    data = b""
    for name, dtype, shape, blob in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


def seed_safetensors():
    write("fuzz_safetensors", "model.safetensors", safetensors([
        ("model.embed_tokens.weight", "F32", [4, 2], f32(8)),
        ("model.norm.weight", "F16", [4], b"".join(struct.pack("<e", 1.0) for _ in range(4))),
        ("lm_head.weight", "BF16", [2, 2], bytes(8)),
        ("positions", "I32", [3], struct.pack("<3i", 0, 1, 2)),
        ("empty", "F32", [0, 3], b""),
    ], metadata={"format": "pt"}))
    shard = "model-00001-of-00001.safetensors"
    write("fuzz_safetensors", "index.json", json.dumps(
        {"metadata": {"total_size": 24}, "weight_map": {"a.weight": shard, "b.ids": shard}}))
    write("fuzz_safetensors", "index-missing-tensor.json", json.dumps(
        {"weight_map": {"a.weight": shard, "c.weight": "model-00002-of-00002.safetensors"}}))


# ---- tokenizer.json ----------------------------------------------------------------------------
def seed_tokenizer_json():
    vocab = {"!": 0, "\"": 1, "H": 2, "e": 3, "l": 4, "o": 5, "\u0120": 6, "w": 7, "r": 8,
             "d": 9, "ll": 10, "He": 11, "\u0120w": 12, "1": 13, "2": 14, "12": 15}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    root = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 16, "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": True, "special": True},
                         {"id": 17, "content": "<tool>", "special": False}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "vocab": vocab, "merges": ["l l", "H e", "\u0120 w", "1 2"]},
    }
    write("fuzz_tokenizer_json", "gpt2.json", json.dumps(root))
    root["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split",
         "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    root["model"]["ignore_merges"] = True
    root["model"]["merges"] = [["l", "l"], ["H", "e"]]
    write("fuzz_tokenizer_json", "llama3-split.json", json.dumps(root))


# ---- config JSON ---------------------------------------------------------------------------------
def seed_config_json():
    write("fuzz_config_json", "qwen2-config.json", json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "vocab_size": 300, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": 16}))
    write("fuzz_config_json", "serve.json", json.dumps({
        "listen": "127.0.0.1:0", "http-listen": "", "data_dir": "/tmp/knowd",
        "max-document-bytes": 65536, "max_passage_tokens": 128, "passage-overlap-tokens": 16,
        "ingest-max-wait-ms": 2, "drain-timeout": 1.5, "default-retrieval": "hybrid",
        "backend": "cpu", "log-level": "warn", "threads": 2, "latent-format": "fp16"}))
    write("fuzz_config_json", "serve-tls.json", json.dumps({
        "tls-cert": "cert.pem", "tls-key": "key.pem", "tls-client-ca": "ca.pem",
        "tokens-file": "tokens.json", "ask_queue_size": 4, "index-factory": "IVF4,Flat"}))


# ---- tokens file ---------------------------------------------------------------------------------
def seed_tokens_file():
    write("fuzz_tokens_file", "tokens.json", json.dumps([
        {"token": "s3cret", "namespaces": ["team-a", "*"], "roles": ["read", "write", "admin"]},
        {"token": "a", "namespaces": ["default"], "roles": ["read"]}]))
    write("fuzz_tokens_file", "writer.json", json.dumps([
        {"token": "w", "namespaces": ["team-a"], "roles": ["write"]}]))


# ---- requests ------------------------------------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_float(num, v):
    return varint(num << 3 | 5) + struct.pack("<f", v)


def seed_requests():
    text = ("Etheth Rulhal lives in Varnis. She works as a potter.\n\nIn 1903 the river "
            "flooded the lower town; caf\u00e9 owners moved uphill. ") * 2
    metadata = field_bytes(1, "source") + field_bytes(2, "test")
    ingest = (field_bytes(1, "team-a") + field_bytes(2, "doc-1") + field_bytes(3, text)
              + field_bytes(4, metadata) + field_varint(5, 1700000000))
    write("fuzz_requests", "ingest", bytes([0 | (7 << 3)]) + ingest)
    write("fuzz_requests", "ingest-short-passages", bytes([0]) + ingest)
    ask = (field_bytes(1, "team-a") + field_bytes(2, "In which city does Etheth Rulhal live?")
           + field_varint(3, 4) + field_varint(4, 3) + field_varint(5, 2) + field_varint(6, 3)
           + field_varint(7, 32) + field_float(8, 0.7) + field_float(9, 0.9)
           + field_varint(10, 7) + field_varint(11, 1))
    write("fuzz_requests", "ask", bytes([1]) + ask)
    write("fuzz_requests", "search",
          bytes([2]) + field_bytes(2, "Etheth Rulhal") + field_varint(3, 5) + field_varint(4, 2))
    write("fuzz_requests", "get", bytes([3]) + field_bytes(1, "default") + field_bytes(2, "doc-1"))
    write("fuzz_requests", "forget",
          bytes([4]) + field_bytes(2, "doc-1") + field_bytes(2, "doc-2") + field_bytes(2, "doc-1"))
    write("fuzz_requests", "stats", bytes([5]) + field_bytes(1, "team-a"))


def main():
    seed_gguf()
    seed_safetensors()
    seed_tokenizer_json()
    seed_config_json()
    seed_tokens_file()
    seed_requests()
    # Small shipped files as they are.
    for target, path in [
            ("fuzz_tokenizer_model", "models/stories260K-hf/tokenizer.model"),
            ("fuzz_config_json", "models/stories260K-hf/config.json"),
            ("fuzz_config_json", "models/knowd-tiny/config.json")]:
        with open(os.path.join(ROOT, path), "rb") as f:
            write(target, path.replace("/", "_"), f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
