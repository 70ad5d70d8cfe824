// Streams tokens from a .moerun model through the C++ wrapper (moerun/moerun.hpp).
//
//   generate MODEL.moerun [IDS]      e.g. generate model.moerun 0,17,42
//
// moerun has no tokenizer, so the prompt is token ids; without IDS it is the model's bos token.
// Sampling: temperature 0.7, top-p 0.9, seed 42, so every run prints the same tokens.
#include <moerun/moerun.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kMaxTokens = 64;

// "0,17,42" -> {0, 17, 42}; the model checks the ids against its vocabulary.
std::vector<int32_t> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long id = -1;
    try {
      id = std::stol(item, &used);
    } catch (const std::logic_error&) {
      // Not a number or out of range: `id` stays -1 and is rejected below with a clearer message.
    }
    if (used != item.size() || id < 0 || id > INT32_MAX)
      throw std::invalid_argument("bad token id '" + item + "' in '" + text + "'");
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) throw std::invalid_argument("no token ids in '" + text + "'");
  return ids;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.moerun [IDS, e.g. 0,17,42]\n";
    return 2;
  }
  try {
    const moerun::Model model = moerun::Model::load(argv[1]);
    const moerun_model_info info = model.info();
    const std::vector<int32_t> prompt =
        argc == 3 ? ParseIds(argv[2]) : std::vector<int32_t>{info.bos_token_id >= 0 ? info.bos_token_id : 0};

    moerun::Session session(model);
    moerun::SamplerOptions options;
    options.temperature = 0.7f;
    options.top_p = 0.9f;
    options.seed = 42;
    moerun::Sampler sampler(options);

    // The first token costs the whole prompt; time it apart so tokens/s measures decoding alone.
    const auto start = std::chrono::steady_clock::now();
    double first_token_s = 0;
    size_t produced = 0;
    const std::vector<int32_t> tokens = session.generate(sampler, prompt, kMaxTokens, [&](int32_t token) {
      if (produced++ == 0) first_token_s = SecondsSince(start);
      std::cout << token << ' ' << std::flush;
      return true;
    });
    const double total_s = SecondsSince(start);

    std::cout << std::fixed << std::setprecision(1) << "\n"
              << tokens.size() << " tokens (" << info.architecture << ", " << info.backend << ")";
    std::cout << "; prompt of " << prompt.size() << " and first token in " << first_token_s * 1e3 << " ms";
    if (tokens.size() > 1) std::cout << "; " << (tokens.size() - 1) / (total_s - first_token_s) << " tokens/s after it";
    std::cout << "\n";
    return 0;
  } catch (const moerun::Error& e) {
    std::cerr << "error: " << moerun::status_string(e.status()) << ": " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
