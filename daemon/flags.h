// The flags of the `knowd` command line, shared by its subcommands (see docs/cli.md).
#pragma once

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, adapter);
ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_DECLARE_FLAG(std::string, prompt);
ABSL_DECLARE_FLAG(std::string, text);
ABSL_DECLARE_FLAG(int, max_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(bool, no_bos);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(std::string, backend);
ABSL_DECLARE_FLAG(std::string, out);
ABSL_DECLARE_FLAG(int, prompt_tokens);
ABSL_DECLARE_FLAG(int, decode_tokens);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(std::string, entries);
ABSL_DECLARE_FLAG(std::string, index);
ABSL_DECLARE_FLAG(std::string, latent_format);
ABSL_DECLARE_FLAG(bool, lexical);
ABSL_DECLARE_FLAG(std::string, bundle);
ABSL_DECLARE_FLAG(std::string, data);
ABSL_DECLARE_FLAG(std::string, split);
ABSL_DECLARE_FLAG(int, limit);
ABSL_DECLARE_FLAG(std::string, report);
ABSL_DECLARE_FLAG(int, batch);
ABSL_DECLARE_FLAG(int, examples);
ABSL_DECLARE_FLAG(int, mac_top_k);
ABSL_DECLARE_FLAG(std::string, mac_retrieval);
ABSL_DECLARE_FLAG(std::string, mac_rag_text);
ABSL_DECLARE_FLAG(double, rag_prefix_key_scale);
ABSL_DECLARE_FLAG(std::string, data_dir);
