// Inputs the fuzz targets (tests/fuzz) found crashing or misread, kept under
// tests/fuzz/regressions/<target>/: each must now be refused with its exact error.
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "model/config.h"

namespace knowd {
namespace {

std::string Regression(const std::string& target, const std::string& name) {
  return std::string(KNOWD_SOURCE_DIR) + "/tests/fuzz/regressions/" + target + "/" + name;
}

void ExpectHfConfigRefused(const std::string& name, const std::string& why) {
  const std::string path = Regression("fuzz_config_json", name);
  EXPECT_EQ(LlamaConfigFromHfJson(path).status(), absl::InvalidArgumentError(path + ": " + why))
      << name;
}

// nlohmann's value() threw type_error for a model_type that is not a string.
TEST(FuzzRegressions, HfConfigModelTypeNotAString) {
  ExpectHfConfigRefused("model-type-number.json", "\"model_type\" is 7, not a string");
}

// A number outside int's range was cast to int: undefined behaviour.
TEST(FuzzRegressions, HfConfigSizeOutsideInt) {
  ExpectHfConfigRefused("vocab-size-1e300.json",
                        "\"vocab_size\" is 1e+300, not an integer in [-2147483648, 2147483647]");
}

// 4294967304 wrapped to 8 and the config was accepted as a hidden size of 8.
TEST(FuzzRegressions, HfConfigSizeThatWrapped) {
  ExpectHfConfigRefused(
      "hidden-size-wraps.json",
      "\"hidden_size\" is 4294967304, not an integer in [-2147483648, 2147483647]");
}

// num_attention_heads x head_dim overflowed int in q_dim().
TEST(FuzzRegressions, HfConfigHeadWidthOverflowsInt) {
  ExpectHfConfigRefused("head-dim-overflow.json",
                        "num_attention_heads x head_dim (65536 x 65536) is too large");
}

}  // namespace
}  // namespace knowd
