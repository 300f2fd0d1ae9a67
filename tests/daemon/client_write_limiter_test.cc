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

}  // namespace
}  // namespace knowd
