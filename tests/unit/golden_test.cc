// Golden tests: convert each fixture checkpoint, run it, and compare with HF transformers' logits
// (fixture format: tests/data/golden/README.md). The project's own fixtures always run; the shared
// development fixtures (../shared/golden) run too when that folder exists.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "converters/converter.h"
#include "tests/unit/golden_util.h"
#include "tests/unit/tiny_model.h"

namespace moerun {
namespace {

using golden::Fixture;
using golden::FindFixtures;
using golden::Quantile;

struct PathCase {
  std::string backend;
  Precision precision;
  double matrix_bound;  // per prompt: relative L2 over all prefill (and over all decode) logits; 0 = off
  double margin;        // greedy choices are checked where the reference margin is at least this
  double min_agreement; // fraction of those checked choices that must agree (1 = all)
  double row_median_bound;  // over all positions of all prompts: median per-position relative L2
  double row_p90_bound;     // and its 90th percentile
};

// Runs every prompt of a fixture on one compute path and checks it against the reference.
void CheckFixture(const Fixture& fx, const std::string& model_path, const PathCase& pc) {
  SCOPED_TRACE(fx.name + " on " + pc.backend + (pc.precision == Precision::kF32 ? "/f32" : "/bf16"));
  golden::FixtureRun run;
  golden::RunFixture(fx.dir, model_path, pc.backend, pc.precision, pc.margin, &run);
  if (::testing::Test::HasFatalFailure()) return;
  const char* prec = pc.precision == Precision::kF32 ? "f32" : "bf16";
  for (size_t i = 0; i < run.prompts.size(); ++i) {
    const golden::PromptResult& p = run.prompts[i];
    if (pc.matrix_bound > 0) {
      EXPECT_LE(p.prefill_err, pc.matrix_bound) << "prompt " << i;
      EXPECT_LE(p.decode_err, pc.matrix_bound) << "prompt " << i;
    }
    std::printf("[golden] %-24s %-9s %-4s prompt %zu (%3zu tokens): rel L2 prefill %.3g decode %.3g; "
                "per position median %.3g p90 %.3g max %.3g\n",
                fx.name.c_str(), pc.backend.c_str(), prec, i, p.tokens, p.prefill_err, p.decode_err,
                Quantile(p.rows, 0.5), Quantile(p.rows, 0.9), Quantile(p.rows, 1.0));
  }
  if (pc.min_agreement >= 1.0)
    for (const golden::GreedyMiss& m : run.misses)
      ADD_FAILURE() << "greedy choice differs: prompt " << m.prompt << " step " << m.step << " margin " << m.margin;
  const double median = Quantile(run.all_rows, 0.5), p90 = Quantile(run.all_rows, 0.9);
  EXPECT_LE(median, pc.row_median_bound);
  EXPECT_LE(p90, pc.row_p90_bound);
  EXPECT_GE(run.agreed, pc.min_agreement * run.checked) << run.agreed << " of " << run.checked
                                                        << " greedy choices agree";
  std::printf("[golden] %-24s %-9s %-4s all prompts: per position median %.3g p90 %.3g; greedy %d/%d agree\n",
              fx.name.c_str(), pc.backend.c_str(), prec, median, p90, run.agreed, run.checked);
}

class GoldenTest : public ::testing::TestWithParam<Fixture> {
 protected:
  std::string Convert(convert::WeightsMode mode) {
    const std::string out = testing::TempDir("golden") + "/" + GetParam().name + "_" +
                            convert::WeightsModeName(mode) + ".moerun";
    convert::ConvertOptions o;
    o.weights = mode;
    const Status st = convert::ConvertHfCheckpoint(GetParam().dir, out, o);
    EXPECT_TRUE(st.ok()) << st.message();
    return out;
  }
};

// The float32 path must match transformers to 1e-4 (observed ~1e-6).
TEST_P(GoldenTest, CpuF32MatchesTransformers) {
  const std::string path = Convert(convert::WeightsMode::kKeep);
  CheckFixture(GetParam(), path, {"cpu", Precision::kF32, 1e-4, 1e-2, 1.0, 1e-4, 1e-4});
}

TEST_P(GoldenTest, ReferenceF32MatchesTransformers) {
  const std::string path = Convert(convert::WeightsMode::kKeep);
  CheckFixture(GetParam(), path, {"reference", Precision::kF32, 1e-4, 1e-2, 1.0, 1e-4, 1e-4});
}

// bf16 compute (matmul inputs rounded to bf16, f32 accumulation). Typical positions land near 5e-3
// to 1e-2. A position whose expert choice flips (a discrete top-k over router inputs that moved by
// bf16 rounding) can move by 0.1 or more, and later positions that attend to it carry a few percent;
// the reference backend's bf16 mode shows the same flips. So the stated bounds, over every position
// of every prompt of a fixture: median relative L2 <= 1e-2, 90th percentile <= 3e-2, and at least
// 90% of greedy choices with a reference margin >= 0.1 agree.
TEST_P(GoldenTest, CpuBf16WithinStatedBounds) {
  const std::string path = Convert(convert::WeightsMode::kKeep);
  CheckFixture(GetParam(), path, {"cpu", Precision::kBF16, 0, 0.1, 0.9, 1e-2, 3e-2});
}

// Weights converted to f32 ahead of time give the same answer as weights kept in their dtype.
TEST_P(GoldenTest, F32WeightsMatchTransformers) {
  const std::string path = Convert(convert::WeightsMode::kF32);
  CheckFixture(GetParam(), path, {"cpu", Precision::kF32, 1e-4, 1e-2, 1.0, 1e-4, 1e-4});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(FindFixtures()),
                         [](const ::testing::TestParamInfo<Fixture>& i) { return i.param.name; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenTest);

TEST(GoldenFixtures, ProjectFixturesArePresent) {
  int own = 0;
  for (const Fixture& f : FindFixtures()) own += f.name.rfind("own_", 0) == 0;
  EXPECT_EQ(own, 4) << "expected four fixtures under tests/data/golden";
}

}  // namespace
}  // namespace moerun
