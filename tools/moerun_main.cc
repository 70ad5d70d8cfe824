// moerun CLI: convert, inspect, run, bench.
#include <cstdio>
#include <cstring>
#include <string>

#include "moerun/moerun.h"
#include "tools/cli_util.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: moerun <command> [options]\n"
               "  convert HF_DIR -o MODEL.moerun [--weights keep|bf16|f32|fp8|int8]\n"
               "  inspect MODEL [--json]\n"
               "  run MODEL --ids 1,2,3 [--max-tokens N] [--greedy | --temperature T --top-k K --top-p P\n"
               "      --min-p P --seed S] [--dump-logits FILE] [--json] [--precision auto|f32|bf16]\n"
               "      [--backend cpu|reference] [--threads N]\n"
               "  bench MODEL [--prompt N] [--gen N] [--threads 1,2] [--batch 1,4,8] [--context N]\n"
               "      [--repeat N] [--json] [--precision auto|f32|bf16] [--backend cpu|reference]\n"
               "  version\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    Usage();
    return argc < 2 ? 1 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "convert") return moerun::cli::RunConvert(argc - 2, argv + 2);
    if (cmd == "inspect") return moerun::cli::RunInspect(argc - 2, argv + 2);
    if (cmd == "run") return moerun::cli::RunRun(argc - 2, argv + 2);
    if (cmd == "bench") return moerun::cli::RunBench(argc - 2, argv + 2);
    if (cmd == "version") {
      std::printf("moerun %s (ABI %u)\n", moerun_version(), moerun_abi_version());
      return 0;
    }
  } catch (const std::exception& e) {
    return moerun::cli::Fail(std::string("internal error: ") + e.what());
  }
  Usage();
  return moerun::cli::Fail("unknown command '" + cmd + "'");
}
