#include "runtime/format/page_sizes.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <new>

namespace moerun {

double HugeMappedShareBySmaps(const void* base) {
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return -1.0;
  const uintptr_t want = reinterpret_cast<uintptr_t>(base);
  char line[512];
  bool in = false;
  long long rss = -1, pmd = -1;
  while (std::fgets(line, sizeof(line), f)) {
    uintptr_t start = 0, end = 0;
    // A mapping's header line: "start-end perms offset dev inode [path]".
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &start, &end) == 2 && std::strchr(line, ' ') &&
        std::strchr(line, '-') < std::strchr(line, ' ')) {
      if (in) break;
      in = start == want;
      continue;
    }
    if (!in) continue;
    long long kib = 0;
    if (std::sscanf(line, "Rss: %lld kB", &kib) == 1) rss = kib;
    if (std::sscanf(line, "FilePmdMapped: %lld kB", &kib) == 1) pmd = kib;
  }
  std::fclose(f);
  if (rss <= 0 || pmd < 0) return -1.0;
  return static_cast<double>(pmd) / static_cast<double>(rss);
}

namespace {

// PAGEMAP_SCAN's ABI (include/uapi/linux/fs.h, Linux 6.7), spelt out: older kernel headers lack it.
struct PageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPageIsPresent = 1u << 3, kPageIsHuge = 1u << 6;

}  // namespace

double HugeMappedShareByScan(const void* base, uint64_t size) {
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -2.0;
  PageRegion regions[256];
  const uint64_t end = reinterpret_cast<uintptr_t>(base) + (size + 4095) / 4096 * 4096;
  uint64_t start = reinterpret_cast<uintptr_t>(base), present = 0, huge = 0;
  while (start < end) {
    PmScanArg a{};
    a.size = sizeof(a);
    a.start = start;
    a.end = end;
    a.vec = reinterpret_cast<uintptr_t>(regions);
    a.vec_len = sizeof(regions) / sizeof(regions[0]);
    a.category_anyof_mask = kPageIsPresent;  // present pages only
    a.return_mask = kPageIsPresent | kPageIsHuge;
    const int n = ::ioctl(fd, kPagemapScan, &a);
    if (n < 0) {  // ENOTTY or EINVAL: a kernel without it
      ::close(fd);
      return -2.0;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t bytes = regions[i].end - regions[i].start;
      present += bytes;
      if (regions[i].categories & kPageIsHuge) huge += bytes;
    }
    if (a.walk_end <= start) break;  // no progress: never loop
    start = a.walk_end;
  }
  ::close(fd);
  return present > 0 ? static_cast<double>(huge) / static_cast<double>(present) : -1.0;
}

double HugeMappedShare(const void* base, uint64_t size) {
  const double share = HugeMappedShareByScan(base, size);
  return share > -2.0 ? share : HugeMappedShareBySmaps(base);
}

ThpMode ParseThpMode(const std::string& text) {
  if (text.find("[always]") != std::string::npos) return ThpMode::kAlways;
  if (text.find("[madvise]") != std::string::npos) return ThpMode::kMadvise;
  if (text.find("[never]") != std::string::npos) return ThpMode::kNever;
  return ThpMode::kUnknown;
}

ThpMode ReadThpMode() {
  std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f) return ThpMode::kUnknown;
  char line[128] = {};
  const bool ok = std::fgets(line, sizeof(line), f) != nullptr;
  std::fclose(f);
  return ok ? ParseThpMode(line) : ThpMode::kUnknown;
}

std::optional<PageAdvice> PageSizeAdvice(double share, ThpMode mode, const std::string& path) {
  if (share < 0.0 || share >= kHugeShareFloor) return std::nullopt;
  if (mode == ThpMode::kNever)
    return PageAdvice{LogLevel::kInfo,
                      "model file '" + path +
                          "': transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled is "
                          "'never'), so its weights are mapped with 4 KiB pages, through which decode reads them "
                          "more slowly; in 'madvise' mode moerun maps them with 2 MiB pages"};
  const int percent = static_cast<int>(share * 100.0);  // rounded down: 89.9% is not "90%"
  return PageAdvice{LogLevel::kWarning,
                    "model file '" + path + "': only " + std::to_string(percent) +
                        "% of the pages read so far are mapped with 2 MiB pages, the rest with 4 KiB pages, "
                        "through which decode reads the weights more slowly. The file was probably in the page "
                        "cache already in small pages (copied, written or read before this load); evicting it, "
                        "e.g. `dd if='" + path + "' iflag=nocache count=0`, lets the next load read it in 2 MiB "
                        "pages. Some kernels and file systems never cache files in 2 MiB pages."};
}

void NoteFilePages(const ModelFile& file, std::atomic<bool>* noted, uint64_t min_bytes) {
  if (!file.mapped() || file.file_size() < min_bytes || noted->load(std::memory_order_relaxed) ||
      !LogEnabled(LogLevel::kWarning) || noted->exchange(true))
    return;
  try {
    if (auto advice = PageSizeAdvice(HugeMappedShare(file.data(), file.file_size()), ReadThpMode(), file.path()))
      Log(advice->level, advice->message);
  } catch (const std::bad_alloc&) {
    // The note is advice: without memory for its text there is none.
  }
}

}  // namespace moerun
