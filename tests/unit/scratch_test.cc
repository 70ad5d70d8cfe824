// Session scratch: ScratchFloats (grown, never zero-filled, huge-page advised when large), the
// executor's independence from whatever an earlier batch left in it, and ScratchPool (a destroyed
// session's scratch kept for the next session on the model).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/core/aligned_buffer.h"
#include "runtime/exec/session.h"
#include "runtime/format/model_file.h"
#include "runtime/model/model.h"
#include "tests/unit/tiny_model.h"

namespace moerun {
namespace {

// The VmFlags line of the mapping in /proc/self/smaps that holds p, or "" if none does.
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  std::string line;
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(' ') > line.find('-')) {
      inside = at >= lo && at < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(ScratchFloats, GrowsKeepingContentsAndAligned) {
  ScratchFloats s;
  EXPECT_EQ(s.data(), nullptr);
  EXPECT_EQ(s.size(), 0u);
  s.Grow(100);
  ASSERT_NE(s.data(), nullptr);
  EXPECT_GE(s.size(), 100u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % 64, 0u);
  for (int i = 0; i < 100; ++i) s.data()[i] = static_cast<float>(i) + 0.5f;
  float* small = s.data();
  s.Grow(50);  // never shrinks or moves
  EXPECT_EQ(s.data(), small);

  const size_t big = (kHugeBytes + 12345) / sizeof(float);
  s.Grow(big);
  ASSERT_GE(s.size(), big);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % kHugeBytes, 0u);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(s.data()[i], static_cast<float>(i) + 0.5f) << i;
  s.data()[big - 1] = 1.0f;  // the whole size is usable
  // A small step up at least doubles (as std::vector does), so a context fed in chunks does not
  // reallocate and copy on every chunk.
  const size_t doubled = 2 * s.size();
  s.Grow(s.size() + 1);
  EXPECT_GE(s.size(), doubled);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % kHugeBytes, 0u);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(s.data()[i], static_cast<float>(i) + 0.5f) << i;

  // Large blocks carry the huge-page advice (smaps' "hg" flag) where the kernel has transparent huge
  // pages at all; small ones do not need it.
  if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
    const std::string flags = VmFlagsOf(s.data());
    ASSERT_FALSE(flags.empty());
    EXPECT_NE((flags + " ").find(" hg "), std::string::npos) << flags;
  }

  // Too much memory: bad_alloc, and the buffer is as it was.
  float* before = s.data();
  const size_t size_before = s.size();
  EXPECT_THROW(s.Grow(SIZE_MAX / 2), std::bad_alloc);
  EXPECT_THROW(s.Grow(SIZE_MAX), std::bad_alloc);
  EXPECT_EQ(s.data(), before);
  EXPECT_EQ(s.size(), size_before);
  EXPECT_EQ(s.data()[7], 7.5f);
}

TEST(ScratchFloats, AllocateLargeAlignsBySize) {
  size_t align = 0;
  void* p = AllocateLarge(1000, &align);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(align, 64u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  AlignedFree(p, align);
  p = AllocateLarge(kHugeBytes, &align);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(align, kHugeBytes);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugeBytes, 0u);
  AlignedFree(p, align);
  EXPECT_EQ(AllocateLarge(SIZE_MAX - 1, &align), nullptr);
}

// Logits of every token of `second`, decoded by a session that first decoded `first` (a longer
// prompt, leaving its values in every scratch buffer and KV page) and was then cleared, or by a fresh
// session when first is empty.
std::vector<float> SecondPromptLogits(const std::shared_ptr<Model>& m, const std::vector<int32_t>& first,
                                      const std::vector<int32_t>& second) {
  SessionOptions so;
  so.kv_capacity = 128;
  so.max_batch_tokens = 128;
  auto s = Session::Create(m, so);
  EXPECT_TRUE(s.ok()) << s.status().message();
  if (!s.ok()) return {};
  auto decode = [&](const std::vector<int32_t>& ids) {
    std::vector<uint8_t> all(ids.size(), 1);
    Batch b;
    b.n_tokens = static_cast<int64_t>(ids.size());
    b.tokens = ids.data();
    b.logits = all.data();
    const Status st = s.value()->Decode(b);
    EXPECT_TRUE(st.ok()) << st.message();
    return st.ok();
  };
  if (!first.empty()) {
    if (!decode(first)) return {};
    s.value()->Clear();
  }
  if (!decode(second)) return {};
  const int64_t V = m->config().vocab_size;
  std::vector<float> out;
  for (size_t t = 0; t < second.size(); ++t) {
    const float* l = s.value()->Logits(static_cast<int64_t>(t)).value();
    out.insert(out.end(), l, l + V);
  }
  return out;
}

// Scratch is not zero-filled: a second prompt in a reused session must give the same bits as in a
// fresh one, on every path that a prompt takes (int8 and bf16 weights, both precisions, both
// backends). An executor or kernel that read scratch it had not written would see the first prompt's
// values here.
TEST(ScratchFloats, ReusedSessionGivesFreshSessionBits) {
  std::vector<int32_t> first(70), second(45);
  for (size_t i = 0; i < first.size(); ++i) first[i] = static_cast<int32_t>((i * 53 + 11) % 96);
  for (size_t i = 0; i < second.size(); ++i) second[i] = static_cast<int32_t>((i * 29 + 3) % 96);
  for (const DType dtype : {DType::kQ8Panel, DType::kBF16}) {
    testing::TinyModelOptions o;
    o.linear_dtype = dtype;
    const std::string path = testing::TempDir("scratch") + "/tiny_" + std::to_string(static_cast<int>(dtype)) + ".moerun";
    const Status st = testing::WriteTinyModel(path, o);
    ASSERT_TRUE(st.ok()) << st.message();
    auto f = ModelFile::Open(path, VerifyOptions{});
    ASSERT_TRUE(f.ok()) << f.status().message();
    for (const char* backend : {"cpu", "reference"}) {
      for (const Precision p : {Precision::kBF16, Precision::kF32}) {
        auto m = Model::Create(f.value(), backend, p, 2);
        ASSERT_TRUE(m.ok()) << m.status().message();
        const std::vector<float> fresh = SecondPromptLogits(m.value(), {}, second);
        const std::vector<float> reused = SecondPromptLogits(m.value(), first, second);
        ASSERT_EQ(fresh.size(), reused.size());
        ASSERT_FALSE(fresh.empty());
        EXPECT_EQ(std::memcmp(fresh.data(), reused.data(), fresh.size() * sizeof(float)), 0)
            << backend << " precision " << static_cast<int>(p) << " dtype " << static_cast<int>(dtype);
      }
    }
  }
}

TEST(ScratchPool, KeepsTheLargerSetUntilTaken) {
  ScratchPool pool;
  EXPECT_EQ(pool.Take(), nullptr);
  EXPECT_EQ(pool.kept_floats(), 0u);
  auto set_of = [](size_t floats) {
    auto set = std::make_unique<ScratchSet>();
    set->buffers[0].Grow(floats);
    set->buffers[5].Grow(floats);
    return set;
  };
  std::unique_ptr<ScratchSet> small = set_of(100), big = set_of(5000);
  const size_t small_floats = small->floats(), big_floats = big->floats();
  const float* big_data = big->buffers[5].data();
  pool.Give(std::move(small));
  EXPECT_EQ(pool.kept_floats(), small_floats);
  pool.Give(std::move(big));  // replaces the smaller one
  EXPECT_EQ(pool.kept_floats(), big_floats);
  pool.Give(set_of(10));  // smaller: freed, the big one stays
  pool.Give(nullptr);
  EXPECT_EQ(pool.kept_floats(), big_floats);
  std::unique_ptr<ScratchSet> taken = pool.Take();
  ASSERT_NE(taken, nullptr);
  EXPECT_EQ(taken->buffers[5].data(), big_data);  // the same memory, not a copy
  EXPECT_EQ(pool.kept_floats(), 0u);
  EXPECT_EQ(pool.Take(), nullptr);
}

// A destroyed session leaves its scratch to the next session on the model (already grown, holding
// the destroyed one's values); that session gives the bits of the model's first session.
TEST(ScratchPool, NextSessionTakesTheDestroyedOnesScratch) {
  std::vector<int32_t> first(90), second(45);
  for (size_t i = 0; i < first.size(); ++i) first[i] = static_cast<int32_t>((i * 41 + 7) % 96);
  for (size_t i = 0; i < second.size(); ++i) second[i] = static_cast<int32_t>((i * 29 + 3) % 96);
  const std::string path = testing::TempDir("scratch_pool") + "/tiny.moerun";
  const Status st = testing::WriteTinyModel(path, testing::TinyModelOptions{});
  ASSERT_TRUE(st.ok()) << st.message();
  auto f = ModelFile::Open(path, VerifyOptions{});
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto m = Model::Create(f.value(), "cpu", Precision::kBF16, 2);
  ASSERT_TRUE(m.ok()) << m.status().message();
  ScratchPool& pool = m.value()->scratch_pool();
  EXPECT_EQ(pool.kept_floats(), 0u);
  const std::vector<float> first_session = SecondPromptLogits(m.value(), {}, second);
  ASSERT_FALSE(first_session.empty());
  const size_t kept = pool.kept_floats();
  EXPECT_GT(kept, 0u);
  {
    // A longer prompt in a session that takes the kept set: the set grows, and it is the session's
    // while the session lives.
    SessionOptions so;
    so.kv_capacity = 128;
    so.max_batch_tokens = 128;
    auto s = Session::Create(m.value(), so);
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_EQ(pool.kept_floats(), 0u);
    Batch b;
    b.n_tokens = static_cast<int64_t>(first.size());
    b.tokens = first.data();
    const Status d = s.value()->Decode(b);
    ASSERT_TRUE(d.ok()) << d.message();
  }
  EXPECT_GT(pool.kept_floats(), kept);
  const std::vector<float> pooled = SecondPromptLogits(m.value(), {}, second);
  ASSERT_EQ(pooled.size(), first_session.size());
  EXPECT_EQ(std::memcmp(pooled.data(), first_session.data(), pooled.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace moerun
