// The runtime's note on how the model file's pages are mapped (runtime/format/page_sizes.h).
#include "runtime/format/page_sizes.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/log.h"
#include "runtime/format/model_file.h"
#include "tests/unit/scoped_temp_dir.h"
#include "tests/unit/tiny_model.h"

namespace moerun {
namespace {

TEST(PageSizes, ParsesTheBracketedThpMode) {
  EXPECT_EQ(ParseThpMode("always [madvise] never\n"), ThpMode::kMadvise);
  EXPECT_EQ(ParseThpMode("[always] madvise never\n"), ThpMode::kAlways);
  EXPECT_EQ(ParseThpMode("always madvise [never]\n"), ThpMode::kNever);
  EXPECT_EQ(ParseThpMode("always madvise never\n"), ThpMode::kUnknown);
  EXPECT_EQ(ParseThpMode(""), ThpMode::kUnknown);
}

TEST(PageSizes, AdviceOnlyBelowTheFloor) {
  EXPECT_FALSE(PageSizeAdvice(1.0, ThpMode::kMadvise, "m.moerun"));
  EXPECT_FALSE(PageSizeAdvice(kHugeShareFloor, ThpMode::kMadvise, "m.moerun"));
  EXPECT_FALSE(PageSizeAdvice(-1.0, ThpMode::kMadvise, "m.moerun"));  // unknown: nothing to say

  const auto partial = PageSizeAdvice(0.77, ThpMode::kMadvise, "/models/m.moerun");
  ASSERT_TRUE(partial);
  EXPECT_EQ(partial->level, LogLevel::kWarning);
  EXPECT_NE(partial->message.find("'/models/m.moerun'"), std::string::npos) << partial->message;
  EXPECT_NE(partial->message.find(" 77% "), std::string::npos) << partial->message;
  EXPECT_NE(partial->message.find("dd if='/models/m.moerun' iflag=nocache count=0"), std::string::npos)
      << partial->message;
  // Rounded down, so that a share just below the floor never reads as the floor.
  const auto near = PageSizeAdvice(0.899, ThpMode::kAlways, "m");
  ASSERT_TRUE(near);
  EXPECT_NE(near->message.find(" 89% "), std::string::npos) << near->message;
  const auto unknown_mode = PageSizeAdvice(0.0, ThpMode::kUnknown, "m");
  ASSERT_TRUE(unknown_mode);
  EXPECT_EQ(unknown_mode->level, LogLevel::kWarning);

  // THP off: nothing can be a 2 MiB page, and evicting the file would not help.
  const auto off = PageSizeAdvice(0.0, ThpMode::kNever, "m.moerun");
  ASSERT_TRUE(off);
  EXPECT_EQ(off->level, LogLevel::kInfo);
  EXPECT_NE(off->message.find("'never'"), std::string::npos) << off->message;
  EXPECT_EQ(off->message.find("iflag=nocache"), std::string::npos) << off->message;
}

TEST(PageSizes, HugeMappedShareOfNothingIsUnknown) {
  int on_stack = 0;
  EXPECT_EQ(HugeMappedShareBySmaps(&on_stack + 1), -1.0);  // inside a mapping, not its start
  EXPECT_EQ(HugeMappedShareBySmaps(nullptr), -1.0);
  EXPECT_EQ(HugeMappedShare(nullptr, 1 << 20), -1.0);  // nothing resident there
}

// A file of `bytes` written, dropped from the page cache and mapped at a 2 MiB boundary with
// MADV_HUGEPAGE (as the model loader maps), every 4 KiB page then read; unmapped and removed at the
// end of the scope.
class MappedFile {
 public:
  MappedFile(const std::string& path, size_t bytes) : path_(path), bytes_(bytes) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    std::vector<char> block(1 << 16);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 131 + 7);
    bool ok = true;
    for (size_t done = 0; ok && done < bytes; done += block.size()) ok = ::write(fd, block.data(), block.size()) > 0;
    ok = ok && ::fsync(fd) == 0 && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    constexpr size_t kHuge = size_t{2} << 20;
    void* r = ok ? ::mmap(nullptr, bytes + kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : MAP_FAILED;
    if (r != MAP_FAILED) {
      reserved_ = r;
      const uintptr_t at = (reinterpret_cast<uintptr_t>(r) + kHuge - 1) & ~(kHuge - 1);
      void* p = ::mmap(reinterpret_cast<void*>(at), bytes, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
      if (p != MAP_FAILED) {
        (void)::madvise(p, bytes, MADV_HUGEPAGE);
        data_ = static_cast<const uint8_t*>(p);
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < bytes; i += 4096) sink = sink + data_[i];
      }
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (reserved_) ::munmap(reserved_, bytes_ + (size_t{2} << 20));
    ::unlink(path_.c_str());
  }
  const uint8_t* data() const { return data_; }

 private:
  std::string path_;
  size_t bytes_;
  void* reserved_ = nullptr;
  const uint8_t* data_ = nullptr;
};

// The two ways to read the share agree, on a mapping the kernel may map with 2 MiB pages (this host's
// kernel does: 1) and on a second one at a file offset 4 KiB past a 2 MiB boundary (there it mapped
// the whole 2 MiB blocks inside with 2 MiB pages: 0.5). A mapping all in 4 KiB pages reads 0 in
// NoteFilePagesTest below.
TEST(PageSizes, ScanAndSmapsAgree) {
  testing::ScopedTempDir dir;
  const size_t bytes = size_t{8} << 20;
  const MappedFile file(dir / "pages.bin", bytes);
  ASSERT_NE(file.data(), nullptr);
  const double by_smaps = HugeMappedShareBySmaps(file.data());
  ASSERT_GE(by_smaps, 0.0);
  const double by_scan = HugeMappedShareByScan(file.data(), bytes);
  if (by_scan != -2.0) {  // -2: a kernel before 6.7, smaps only
    EXPECT_EQ(by_scan, by_smaps);
  }
  EXPECT_EQ(HugeMappedShare(file.data(), bytes), by_smaps);

  // Half of it through a second mapping, from file offset 4 KiB.
  const int fd = ::open((dir / "pages.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  void* plain = ::mmap(nullptr, bytes / 2, PROT_READ, MAP_PRIVATE, fd, 4096);
  ::close(fd);
  ASSERT_NE(plain, MAP_FAILED);
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < bytes / 2; i += 4096) sink = sink + static_cast<const uint8_t*>(plain)[i];
  const double plain_smaps = HugeMappedShareBySmaps(plain), plain_scan = HugeMappedShareByScan(plain, bytes / 2);
  ::munmap(plain, bytes / 2);
  EXPECT_GE(plain_smaps, 0.0);
  EXPECT_LE(plain_smaps, 1.0);
  if (plain_scan != -2.0) {
    EXPECT_EQ(plain_scan, plain_smaps);
  }
}

struct Captured {
  std::vector<std::pair<int, std::string>> lines;
};
void Capture(void* user, int level, const char* message) {
  static_cast<Captured*>(user)->lines.emplace_back(level, message);
}

class NoteFilePagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "tiny.moerun";
    ASSERT_TRUE(testing::WriteTinyModel(path_, testing::TinyModelOptions{}).ok());
    SetLogSink(Capture, &log_, LogLevel::kDebug);
  }
  void TearDown() override { SetLogSink(nullptr, nullptr, LogLevel::kWarning); }
  // Reads every 4 KiB page of the mapping, as a forward pass reads the weights.
  static void Touch(const ModelFile& f) {
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < f.file_size(); i += 4096) sink = sink + f.data()[i];
  }

  testing::ScopedTempDir dir_;
  std::string path_;
  Captured log_;
};

TEST_F(NoteFilePagesTest, LogsOnceForAMappedFileInSmallPages) {
  auto file = ModelFile::Open(path_, VerifyOptions{});
  ASSERT_TRUE(file.ok()) << file.status().message();
  const ModelFile& f = *file.value();
  EXPECT_TRUE(f.mapped());
  EXPECT_EQ(f.path(), path_);
  Touch(f);
  // A file below 2 MiB gets a plain mapping (model_file.cc): all of it on 4 KiB pages.
  ASSERT_LT(f.file_size(), uint64_t{2} << 20);
  ASSERT_EQ(HugeMappedShare(f.data(), f.file_size()), 0.0);

  std::atomic<bool> noted{false};
  NoteFilePages(f, &noted, f.file_size() + 1);  // below the size worth a note
  EXPECT_TRUE(log_.lines.empty());
  EXPECT_FALSE(noted.load());

  NoteFilePages(f, &noted, 0);
  ASSERT_EQ(log_.lines.size(), 1u);
  EXPECT_TRUE(noted.load());
  const auto& [level, text] = log_.lines[0];
  EXPECT_EQ(level, static_cast<int>(ReadThpMode() == ThpMode::kNever ? LogLevel::kInfo : LogLevel::kWarning));
  EXPECT_NE(text.find("'" + path_ + "'"), std::string::npos) << text;
  NoteFilePages(f, &noted, 0);  // once per flag
  EXPECT_EQ(log_.lines.size(), 1u);
}

TEST_F(NoteFilePagesTest, SilentForBuffersAndWhenWarningsAreOff) {
  // The caller's own mapping of the file: FromMemory uses it in place (it is 64-byte aligned), and
  // it starts a mapping of 4 KiB pages that HugeMappedShare can see; still not the runtime's to note.
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  const size_t size = static_cast<size_t>(st.st_size);
  void* mem = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  ASSERT_NE(mem, MAP_FAILED);
  std::unique_ptr<void, std::function<void(void*)>> unmap(mem, [size](void* p) { ::munmap(p, size); });
  auto buffer = ModelFile::FromMemory(mem, size, VerifyOptions{});
  ASSERT_TRUE(buffer.ok()) << buffer.status().message();
  Touch(*buffer.value());
  ASSERT_EQ(HugeMappedShare(mem, size), 0.0);
  EXPECT_FALSE(buffer.value()->mapped());
  std::atomic<bool> noted{false};
  NoteFilePages(*buffer.value(), &noted, 0);
  EXPECT_TRUE(log_.lines.empty());

  auto file = ModelFile::Open(path_, VerifyOptions{});
  ASSERT_TRUE(file.ok()) << file.status().message();
  Touch(*file.value());
  SetLogSink(Capture, &log_, LogLevel::kError);
  NoteFilePages(*file.value(), &noted, 0);
  EXPECT_TRUE(log_.lines.empty());
  EXPECT_FALSE(noted.load());  // still to come once warnings are logged
}

}  // namespace
}  // namespace moerun
