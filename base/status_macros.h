// Early returns on an error absl::Status, for every folder of knowd (Abseil 20220623 ships no
// status macros of its own). base/ is the bottom layer: it includes nothing of knowd's.
//
//   KNOWD_RETURN_IF_ERROR(expr);          expr is an absl::Status: returns it unless OK.
//   KNOWD_ASSIGN_OR_RETURN(lhs, expr);    expr is an absl::StatusOr<T>: returns its status unless
//                                         OK, else moves its value into lhs, which may declare a
//                                         variable ("auto x", "std::vector<int> v") or name one.
//
// Both work in functions returning absl::Status or any absl::StatusOr<U>. Each evaluates expr
// exactly once. KNOWD_ASSIGN_OR_RETURN is a statement, not an expression: it cannot be the
// unbraced body of an if or a loop.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KNOWD_RETURN_IF_ERROR(expr)                                          \
  do {                                                                       \
    ::absl::Status knowd_status_macro_status_ = (expr);                      \
    if (!knowd_status_macro_status_.ok()) return knowd_status_macro_status_; \
  } while (0)

#define KNOWD_STATUS_MACRO_CONCAT_INNER(a, b) a##b
#define KNOWD_STATUS_MACRO_CONCAT(a, b) KNOWD_STATUS_MACRO_CONCAT_INNER(a, b)

#define KNOWD_ASSIGN_OR_RETURN(lhs, expr) \
  KNOWD_ASSIGN_OR_RETURN_IMPL(KNOWD_STATUS_MACRO_CONCAT(knowd_status_or_, __LINE__), lhs, expr)

#define KNOWD_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr)   \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)
