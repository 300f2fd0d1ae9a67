// ClientWriteLimiter (daemon/scheduler.h): each client's writes in flight, capped per client.
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "daemon/scheduler.h"
#include "gtest/gtest.h"

namespace knowd {
namespace {

TEST(ClientWriteLimiter, RefusesAClientAtItsCapAndNoOtherClient) {
  ClientWriteLimiter limiter(2);
  EXPECT_TRUE(limiter.TryAcquire("a").ok());
  EXPECT_TRUE(limiter.TryAcquire("a").ok());
  const absl::Status refused = limiter.TryAcquire("a");
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
  EXPECT_NE(refused.message().find("2 writes in flight"), std::string::npos) << refused;
  EXPECT_TRUE(limiter.TryAcquire("b").ok());
  EXPECT_EQ(limiter.in_flight("a"), 2);
  EXPECT_EQ(limiter.in_flight("b"), 1);
  limiter.Release("a");
  EXPECT_TRUE(limiter.TryAcquire("a").ok());
}

TEST(ClientWriteLimiter, ASlotIsGivenBackWhenItsHolderGoes) {
  ClientWriteLimiter limiter(1);
  ASSERT_TRUE(limiter.TryAcquire("a").ok());
  { WritePermit permit(&limiter, "a"); }
  EXPECT_EQ(limiter.in_flight("a"), 0);
  EXPECT_TRUE(limiter.TryAcquire("a").ok());
}

TEST(ClientWriteLimiter, AcquireWaitsForTheClientsOwnWritesOrStops) {
  ClientWriteLimiter limiter(1);
  ASSERT_TRUE(limiter.TryAcquire("a").ok());
  // Another client is not held up by a's full cap.
  EXPECT_TRUE(limiter.Acquire("b", [] { return false; }));
  // a waits until one of its writes completes.
  std::atomic<bool> acquired{false};
  std::thread waiter([&] { acquired = limiter.Acquire("a", [] { return false; }); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(acquired.load());
  limiter.Release("a");
  waiter.join();
  EXPECT_TRUE(acquired.load());
  EXPECT_EQ(limiter.in_flight("a"), 1);
  // A stop (the call cancelled, the daemon draining) ends the wait with nothing taken.
  EXPECT_FALSE(limiter.Acquire(
      "a", [] { return true; }, absl::Milliseconds(1)));
  EXPECT_EQ(limiter.in_flight("a"), 1);
}

TEST(ClientWriteLimiter, CapZeroLimitsNothing) {
  ClientWriteLimiter limiter(0);
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(limiter.TryAcquire("a").ok());
  EXPECT_TRUE(limiter.Acquire("a", [] { return true; }));
  EXPECT_EQ(limiter.in_flight("a"), 10001);
}

TEST(ClientWriteLimiter, PacesEachClientsForgetsToItsRate) {
  ClientWriteLimiter limiter(0, 10);  // 10 Forget calls a second, a second's worth at once
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(limiter.ReserveForget("a", t0), absl::ZeroDuration());
  EXPECT_EQ(limiter.ReserveForget("a", t0), absl::Milliseconds(100));
  EXPECT_EQ(limiter.ReserveForget("a", t0), absl::Milliseconds(200));
  // Another client has its own turns.
  EXPECT_EQ(limiter.ReserveForget("b", t0), absl::ZeroDuration());
  // A turn given back is the next caller's.
  limiter.CancelForget("a");
  EXPECT_EQ(limiter.ReserveForget("a", t0), absl::Milliseconds(200));
  // A second later 10 more turns have come: the 2 reserved ahead are taken from them.
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(limiter.ReserveForget("a", t0 + absl::Seconds(1)), absl::ZeroDuration());
  }
  EXPECT_EQ(limiter.ReserveForget("a", t0 + absl::Seconds(1)), absl::Milliseconds(100));
  // Idle for long, it holds a second's worth again, not more.
  const absl::Time later = t0 + absl::Seconds(60);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(limiter.ReserveForget("a", later), absl::ZeroDuration());
  EXPECT_GT(limiter.ReserveForget("a", later), absl::ZeroDuration());
}

TEST(ClientWriteLimiter, NoRateMeansNoWait) {
  ClientWriteLimiter limiter(0, 0);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(limiter.ReserveForget("a", t0), absl::ZeroDuration());
}

}  // namespace
}  // namespace knowd
