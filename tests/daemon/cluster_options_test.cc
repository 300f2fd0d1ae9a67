// The cluster's routing rule and options (daemon/cluster_log.h). ShardOf must agree with
// HAProxy's crc32 converter (deploy/cluster/make-haproxy-cfg) and with zlib.crc32, which the
// expected values below come from.
#include <gtest/gtest.h>

#include "daemon/cluster_log.h"

namespace knowd {
namespace {

TEST(ClusterOptionsTest, ShardIsCrc32OfTheNamespaceModuloShards) {
  // zlib.crc32(b"default") = 3814588639, b"tenant-7" = 311209162, "é" (UTF-8) = 235179326.
  EXPECT_EQ(ShardOf("default", 2), 3814588639u % 2);
  EXPECT_EQ(ShardOf("default", 5), 3814588639u % 5);
  EXPECT_EQ(ShardOf("tenant-7", 2), 311209162u % 2);
  EXPECT_EQ(ShardOf("tenant-0", 5), 2364029289u % 5);
  EXPECT_EQ(ShardOf("\xc3\xa9", 5), 235179326u % 5);
  EXPECT_EQ(ShardOf("anything", 1), 0);
}

TEST(ClusterOptionsTest, UnusableOptionsAreRefusedWithTheFlagNamed) {
  ClusterOptions single;
  EXPECT_TRUE(CheckClusterOptions(single).ok());  // no NATS: a single daemon

  ClusterOptions o;
  o.servers = {"nats://127.0.0.1:4222"};
  o.shards = 2;
  o.shard = 1;
  o.replica = "knowd-1";
  EXPECT_TRUE(CheckClusterOptions(o).ok());

  ClusterOptions bad = o;
  bad.shard = 2;
  EXPECT_NE(CheckClusterOptions(bad).message().find("--shard"), std::string::npos);
  bad = o;
  bad.replica = "";
  EXPECT_NE(CheckClusterOptions(bad).message().find("--replica"), std::string::npos);
  bad.replica = "a.b";  // a subject token separator
  EXPECT_EQ(CheckClusterOptions(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = o;
  bad.stream = "log*";
  EXPECT_NE(CheckClusterOptions(bad).message().find("--cluster-stream"), std::string::npos);
  bad = o;
  bad.stream_replicas = 7;
  EXPECT_NE(CheckClusterOptions(bad).message().find("--cluster-stream-replicas"),
            std::string::npos);
}

}  // namespace
}  // namespace knowd
