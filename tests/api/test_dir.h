// The scratch folder of one test process: created on first use, removed with its contents at exit.
// ctest runs test cases as parallel processes (and several build trees may test at once), so fixed
// names under the shared temp directory would let one process overwrite another's files.
#pragma once

#include <string>

#include "tests/unit/scoped_temp_dir.h"

namespace moerun::testing {

inline const std::string& TestDir() {
  static const ScopedTempDir dir("moerun_api_test");
  return dir.path();
}

}  // namespace moerun::testing
