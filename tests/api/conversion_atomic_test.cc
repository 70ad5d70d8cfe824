// `moerun convert` never leaves a broken file under the output name: the converter writes a
// temporary file and renames it over the output only when it is complete. Checked here the way it
// fails in practice: the disk fills up (a file-size limit makes every write past it fail), and the
// process is killed at an arbitrary moment.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "moerun/moerun.h"
#include "tests/api/test_dir.h"

namespace {

namespace fs = std::filesystem;

const std::string kV3 = MOERUN_TEST_DATA_DIR "/golden/v3_bf16";
const std::string kV2Lite = MOERUN_TEST_DATA_DIR "/golden/v2lite_bf16";

// Starts `moerun convert src -o out` with its output file size limited to max_bytes (0: no limit)
// and SIGXFSZ ignored, so that a write past the limit fails with EFBIG as a full disk fails with
// ENOSPC. Returns the child's pid.
pid_t StartConvert(const std::string& src, const std::string& out, rlim_t max_bytes) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (max_bytes > 0) {
      signal(SIGXFSZ, SIG_IGN);
      const rlimit limit{max_bytes, max_bytes};
      setrlimit(RLIMIT_FSIZE, &limit);
    }
    const int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
    execl(MOERUN_CLI, MOERUN_CLI, "convert", src.c_str(), "-o", out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

int ExitCode(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Loads the file with every weight checksum verified; returns its vocabulary size, or 0 when it
// does not load.
uint32_t VerifiedVocab(const std::string& path) {
  moerun_model_options o;
  moerun_model_options_init(&o);
  o.backend = "reference";
  o.verify_weights = 1;
  moerun_model* m = nullptr;
  if (moerun_model_load(path.c_str(), &o, &m) != MOERUN_OK) return 0;
  moerun_model_info info;
  moerun_model_info_init(&info);
  const uint32_t vocab = moerun_model_get_info(m, &info) == MOERUN_OK ? info.vocab_size : 0;
  moerun_model_destroy(m);
  return vocab;
}

std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  return names;
}

class ConvertAtomic : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = moerun::testing::TestDir() + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // The previous model under the output name: v2lite (vocab 512); the new one is v3 (vocab 384).
    ASSERT_EQ(ExitCode(StartConvert(kV2Lite, out(), 0)), 0);
    ASSERT_EQ(VerifiedVocab(out()), 512u);
    ASSERT_EQ(ExitCode(StartConvert(kV3, dir_ + "/reference.moerun", 0)), 0);
    full_size_ = fs::file_size(dir_ + "/reference.moerun");
    fs::remove(dir_ + "/reference.moerun");
  }
  std::string out() const { return dir_ + "/model.moerun"; }

  std::string dir_;
  uintmax_t full_size_ = 0;
};

TEST_F(ConvertAtomic, DiskFullLeavesThePreviousFileAndNoTemporary) {
  // Limits from nothing at all to one byte short of the finished file: the write fails in the
  // header, the graph, and at points through the weights.
  for (const rlim_t limit : {rlim_t{1}, rlim_t{4096}, rlim_t{full_size_ / 3}, rlim_t{full_size_ - 1}}) {
    SCOPED_TRACE("file size limit " + std::to_string(limit) + " of " + std::to_string(full_size_));
    EXPECT_NE(ExitCode(StartConvert(kV3, out(), limit)), 0);
    EXPECT_EQ(VerifiedVocab(out()), 512u) << "the previous model under the output name was damaged";
    EXPECT_EQ(FilesIn(dir_), std::vector<std::string>{"model.moerun"}) << "a temporary file was left behind";
  }
  // And with room to finish, the new model replaces the old one.
  EXPECT_EQ(ExitCode(StartConvert(kV3, out(), full_size_)), 0);
  EXPECT_EQ(VerifiedVocab(out()), 384u);
}

TEST_F(ConvertAtomic, KilledConversionNeverLeavesABrokenFile) {
  // SIGKILL at growing delays, from before the temporary exists until a conversion gets to finish.
  // Whenever it lands, the output name holds either the old model or the complete new one.
  int old_seen = 0, new_seen = 0, killed_mid_write = 0;
  for (int delay_us = 0; new_seen == 0 && delay_us < 20'000'000;
       delay_us = delay_us < 2000 ? delay_us + 250 : delay_us * 5 / 4) {
    SCOPED_TRACE("killed after " + std::to_string(delay_us) + " us");
    const pid_t pid = StartConvert(kV3, out(), 0);
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    kill(pid, SIGKILL);
    ExitCode(pid);
    const uint32_t vocab = VerifiedVocab(out());
    EXPECT_TRUE(vocab == 512u || vocab == 384u) << "the output name holds a file that does not verify";
    (vocab == 512u ? old_seen : new_seen)++;
    // A killed process cannot clean up: its temporary (never the output name) may remain.
    for (const std::string& name : FilesIn(dir_))
      if (name != "model.moerun") {
        EXPECT_EQ(name.rfind("model.moerun.tmp.", 0), 0u) << "unexpected file " << name;
        fs::remove(dir_ + "/" + name);
        ++killed_mid_write;
      }
  }
  std::printf("killed before the temporary: %d runs, while writing it: %d, after the rename: %d\n",
              old_seen - killed_mid_write, killed_mid_write, new_seen);
  EXPECT_GT(old_seen, 0);
  EXPECT_EQ(new_seen, 1) << "no conversion finished within 20 s";
}

}  // namespace
