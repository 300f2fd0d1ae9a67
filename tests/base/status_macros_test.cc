#include "base/status_macros.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace knowd {
namespace {

int calls = 0;

absl::Status Counted(absl::Status s) {
  ++calls;
  return s;
}

absl::StatusOr<int> CountedOr(absl::StatusOr<int> v) {
  ++calls;
  return v;
}

absl::Status Twice(absl::Status first, absl::Status second, int* reached) {
  KNOWD_RETURN_IF_ERROR(Counted(first));
  *reached = 1;
  KNOWD_RETURN_IF_ERROR(Counted(second));
  *reached = 2;
  return absl::OkStatus();
}

TEST(StatusMacros, ReturnIfErrorReturnsTheFirstErrorAndEvaluatesOnce) {
  int reached = 0;
  calls = 0;
  EXPECT_TRUE(Twice(absl::OkStatus(), absl::OkStatus(), &reached).ok());
  EXPECT_EQ(reached, 2);
  EXPECT_EQ(calls, 2);

  reached = 0;
  calls = 0;
  EXPECT_EQ(Twice(absl::NotFoundError("a"), absl::InternalError("b"), &reached),
            absl::NotFoundError("a"));
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(calls, 1);

  EXPECT_EQ(Twice(absl::OkStatus(), absl::InternalError("b"), &reached), absl::InternalError("b"));
  EXPECT_EQ(reached, 1);
}

// In a function returning StatusOr<T>, the error status becomes the StatusOr's.
absl::StatusOr<std::string> Named(absl::Status s) {
  KNOWD_RETURN_IF_ERROR(s);
  return std::string("ok");
}

TEST(StatusMacros, ReturnIfErrorInAStatusOrFunction) {
  EXPECT_EQ(*Named(absl::OkStatus()), "ok");
  EXPECT_EQ(Named(absl::DataLossError("x")).status(), absl::DataLossError("x"));
}

absl::StatusOr<int> Sum(absl::StatusOr<int> a, absl::StatusOr<int> b) {
  KNOWD_ASSIGN_OR_RETURN(int x, CountedOr(a));  // declares
  int y = 0;
  KNOWD_ASSIGN_OR_RETURN(y, CountedOr(b));  // assigns an existing variable
  return x + y;
}

TEST(StatusMacros, AssignOrReturnDeclaresOrAssignsAndEvaluatesOnce) {
  calls = 0;
  EXPECT_EQ(*Sum(2, 3), 5);
  EXPECT_EQ(calls, 2);
  calls = 0;
  EXPECT_EQ(Sum(absl::OutOfRangeError("a"), 3).status(), absl::OutOfRangeError("a"));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(Sum(1, absl::AbortedError("b")).status(), absl::AbortedError("b"));
}

// Move-only values are moved out; the status of a function returning plain Status works too.
absl::StatusOr<std::unique_ptr<int>> Make(bool ok) {
  if (!ok) return absl::UnavailableError("no");
  return std::make_unique<int>(7);
}

absl::Status Take(bool ok, int* out) {
  KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<int> p, Make(ok));
  KNOWD_ASSIGN_OR_RETURN(auto q, Make(ok));  // two on different lines in one scope
  *out = *p + *q;
  return absl::OkStatus();
}

TEST(StatusMacros, AssignOrReturnMovesOnlyValuesAndReturnsPlainStatus) {
  int out = 0;
  EXPECT_TRUE(Take(true, &out).ok());
  EXPECT_EQ(out, 14);
  EXPECT_EQ(Take(false, &out), absl::UnavailableError("no"));
}

}  // namespace
}  // namespace knowd
