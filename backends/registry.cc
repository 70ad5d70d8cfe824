#include "backends/cpu/cpu_backend.h"
#include "backends/reference/reference_backend.h"

namespace moerun {

Result<std::unique_ptr<Backend>> CreateBackend(const std::string& name, Precision precision) {
  if (name == "cpu") return cpu::CreateCpuBackend(precision);
  if (name == "reference") {
    std::unique_ptr<Backend> b(new (std::nothrow) reference::ReferenceBackend(precision));
    if (!b) return OutOfMemory("creating the reference backend");
    return b;
  }
  std::string known;
  for (const auto& n : BackendNames()) known += (known.empty() ? "" : ", ") + n;
  return Unsupported("unknown backend '" + name + "' (available: " + known + ")");
}

std::vector<std::string> BackendNames() { return {"cpu", "reference"}; }

}  // namespace moerun
