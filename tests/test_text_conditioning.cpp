// Text conditioning: the tokenizer (round trip, determinism, its stored form), the masked
// attention against a float64 loop, the encoder and the cross-attention blocks (shapes, masks,
// the identity at initialisation), guidance and caption dropout on token rows, captions read from
// image trees, and a model trained a few steps on the captioned digits whose loss falls, saved,
// loaded and sampled from a prompt.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/data/captioned_digits.h"
#include "diffuse/diffusion/label_dropout.h"
#include "diffuse/eval/classifier.h"
#include "diffuse/eval/prompt_following.h"
#include "diffuse/io/image.h"
#include "diffuse/model/text_encoder.h"
#include "diffuse/model/unet.h"
#include "diffuse/pipeline/pipeline.h"
#include "diffuse/runtime/attention.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/text/tokenizer.h"
#include "diffuse/train/trainer.h"
#include "support/error_of.h"
#include "support/run_command.h"
#include "support/small_training.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::logged_losses;
using diffuse::testing::run_command;
using diffuse::testing::small_training;
using diffuse::testing::TempDir;

namespace {

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

TEST(Tokenizer, LearnsTheSameVocabularyFromCaptionsInAnyOrder) {
  const std::vector<std::string> captions{"3 left of 8", "a small 5 above a 1", "8 right of 3", "1 below a small 5"};
  const auto a = Tokenizer::learn(captions);
  auto reversed = captions;
  std::reverse(reversed.begin(), reversed.end());
  const auto b = Tokenizer::learn(reversed);
  EXPECT_EQ(a.words(), b.words());
  // by falling count, ties alphabetical: "a" (3 times) first, then the words seen twice
  EXPECT_EQ(a.words().front(), "a");
  EXPECT_EQ(std::vector<std::string>(a.words().begin() + 1, a.words().begin() + 6),
            (std::vector<std::string>{"1", "3", "5", "8", "of"}));
  EXPECT_EQ(a.max_tokens(), 1 + 6);  // <start> + "a small 5 above a 1"
}

TEST(Tokenizer, EncodesToRowsThatDecodeBackAndMarksWhatItCannotRead) {
  const auto tok = Tokenizer::learn({"3 left of 8", "A small 5, above a 1"});
  const auto row = tok.encode("3 LEFT of 8");
  ASSERT_EQ(row.sizes(), torch::IntArrayRef({tok.max_tokens()}));
  EXPECT_EQ(row[0].item<int64_t>(), Tokenizer::kStart);
  EXPECT_EQ(row[5].item<int64_t>(), Tokenizer::kPad);
  EXPECT_EQ(tok.decode(row), "3 left of 8");
  EXPECT_EQ(tok.decode(tok.encode("a small 5 , above a 1")), "a small 5 , above a 1");
  EXPECT_EQ(Tokenizer::split_words("a 3, LEFT!"), (std::vector<std::string>{"a", "3", ",", "left", "!"}));
  // a word it never saw becomes <unknown>, and is reported
  EXPECT_EQ(tok.decode(tok.encode("3 near 8")), "3 <unknown> 8");
  EXPECT_EQ(tok.unknown_words("3 near 8"), std::vector<std::string>{"near"});
  // longer than a row: truncated, and said
  const std::string long_prompt = "3 left of 8 left of 3 left of 8";
  EXPECT_TRUE(tok.truncated(long_prompt));
  EXPECT_FALSE(tok.truncated("3 left of 8"));
  EXPECT_EQ(tok.encode(long_prompt).size(0), tok.max_tokens());
  // the empty prompt is <start> alone
  EXPECT_EQ(tok.encode("").sum().item<int64_t>(), Tokenizer::kStart);
  // encode of many = the rows of each
  const auto rows = tok.encode(std::vector<std::string>{"3 left of 8", "1"});
  EXPECT_TRUE(rows[1].equal(tok.encode("1")));
}

TEST(Tokenizer, ItsStoredFormRoundTripsAndBrokenFormsAreRefused) {
  const auto tok = Tokenizer::learn({"3 left of 8", "8 above a small 1"});
  const auto back = Tokenizer::from_json(tok.to_json());
  EXPECT_EQ(back.words(), tok.words());
  EXPECT_EQ(back.max_tokens(), tok.max_tokens());
  EXPECT_TRUE(back.encode("8 above a small 1").equal(tok.encode("8 above a small 1")));
  auto broken = [&](const std::string& key, const nlohmann::json& value) {
    auto j = tok.to_json();
    j[key] = value;
    return error_of([&] { Tokenizer::from_json(j); });
  };
  EXPECT_NE(broken("words", {"a", "a"}).find("twice"), std::string::npos);
  EXPECT_NE(broken("words", {"two words"}).find("not one lower-case word"), std::string::npos);
  EXPECT_NE(broken("words", {"Left"}).find("not one lower-case word"), std::string::npos);
  EXPECT_NE(broken("max_tokens", 100000).find("max_tokens"), std::string::npos);
  EXPECT_NE(broken("max_tokens", "five").find("max_tokens"), std::string::npos);
  EXPECT_NE(broken("kind", "bpe").find("bpe"), std::string::npos);
}

TEST(MaskedAttention, MatchesAFloat64LoopAndIgnoresMaskedKeys) {
  torch::manual_seed(0);
  const int64_t B = 2, N = 5, L = 4, D = 6, heads = 2, d = D / heads;
  const auto q = torch::randn({B, N, D}), k = torch::randn({B, L, D}), v = torch::randn({B, L, D});
  auto mask = torch::ones({B, L}, torch::kBool);
  mask[0][3] = false;
  mask[1][1] = false;
  mask[1][2] = false;
  const auto out = masked_attention(q, k, v, mask, heads);
  // out[b, i, h·d + c] = Σ_j softmax_j(q·k / √d) v[b, j, h·d + c] over the unmasked j
  auto q64 = q.to(torch::kFloat64), k64 = k.to(torch::kFloat64), v64 = v.to(torch::kFloat64);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < N; ++i) {
        std::vector<double> w(L, 0.0);
        double total = 0;
        for (int64_t j = 0; j < L; ++j) {
          if (!mask[b][j].item<bool>()) continue;
          double dot = 0;
          for (int64_t c = 0; c < d; ++c)
            dot += q64[b][i][h * d + c].item<double>() * k64[b][j][h * d + c].item<double>();
          w[j] = std::exp(dot / std::sqrt(static_cast<double>(d)));
          total += w[j];
        }
        for (int64_t c = 0; c < d; ++c) {
          double expected = 0;
          for (int64_t j = 0; j < L; ++j) expected += w[j] / total * v64[b][j][h * d + c].item<double>();
          worst = std::max(worst, std::abs(expected - out[b][i][h * d + c].item<double>()));
        }
      }
    }
  }
  EXPECT_LT(worst, 1e-5);
  // what sits at a masked key does not matter
  auto k2 = k.clone(), v2 = v.clone();
  k2[0][3].fill_(100.0);
  v2[1][1].fill_(-50.0);
  EXPECT_TRUE(torch::allclose(masked_attention(q, k2, v2, mask, heads), out));
}

TEST(TextEncoder, GivesAStateATokenAndPaddingChangesNothingBeforeIt) {
  torch::manual_seed(1);
  TextEncoder encoder(/*vocab_size=*/12, /*max_tokens=*/6, /*width=*/16, /*layers=*/2, /*heads=*/4);
  encoder->eval();
  const auto ids = torch::tensor({1, 5, 7, 0, 0, 0, 1, 5, 7, 9, 0, 0}, torch::kLong).view({2, 6});
  const auto states = encoder(ids);
  ASSERT_EQ(states.sizes(), torch::IntArrayRef({2, 6, 16}));
  EXPECT_TRUE(torch::isfinite(states).all().item<bool>());
  // the second row differs from the first only by a token after theirs: a token attends to every
  // token that is not <pad>, so all of them change; with the mask, the <pad> positions of the
  // first row do not reach its tokens (a layer alone, fed anything at the <pad> positions)
  EXPECT_FALSE(torch::allclose(states[0].narrow(0, 0, 3), states[1].narrow(0, 0, 3)));
  TextEncoderLayer layer(16, 4);
  auto h = torch::randn({1, 6, 16});
  const auto mask = token_mask(ids[0].unsqueeze(0));
  const auto before = layer(h, mask);
  auto h2 = h.clone();
  h2[0].narrow(0, 3, 3).normal_();
  EXPECT_TRUE(torch::allclose(layer(h2, mask).narrow(1, 0, 3), before.narrow(1, 0, 3), 1e-5, 1e-6));
  EXPECT_NE(error_of([&] { encoder(torch::zeros({1, 6}, torch::kLong)); }).find("all <pad>"), std::string::npos);
  EXPECT_NE(error_of([&] {
              encoder(torch::full({1, 6}, 12, torch::kLong));
            }).find("ids must be in"),
            std::string::npos);
}

TEST(CrossAttentionBlock, StartsAsTheIdentityThenReadsOnlyTheUnmaskedTokens) {
  torch::manual_seed(2);
  CrossAttentionBlock block(/*channels=*/8, /*context_dim=*/16, /*groups=*/4, 1e-5, /*heads=*/2);
  block->zero_last_layer();
  const auto x = torch::randn({2, 8, 5, 5}), states = torch::randn({2, 6, 16});
  auto mask = torch::ones({2, 6}, torch::kBool);
  mask.narrow(1, 4, 2).fill_(false);
  EXPECT_TRUE(torch::equal(block(x, states, mask), x));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : block->named_parameters()) {
      if (p.key().find("proj_out") != std::string::npos) p.value().normal_();
    }
  }
  const auto out = block(x, states, mask);
  EXPECT_FALSE(torch::allclose(out, x));
  auto other = states.clone();
  other.narrow(1, 4, 2).normal_();  // only masked tokens change
  EXPECT_TRUE(torch::allclose(block(x, other, mask), out, 1e-5, 1e-6));
  other.narrow(1, 0, 1).normal_();  // a token it reads changes
  EXPECT_FALSE(torch::allclose(block(x, other, mask), out, 1e-5, 1e-6));
}

TEST(TextConditionalUNet, TakesTokenRowsAndItsNullConditionIsTheEmptyPrompt) {
  torch::manual_seed(3);
  const auto tok = Tokenizer::learn({"3 left of 8", "a small 5 above a 1"});
  const auto config = with_text(unet_config_by_name("tiny", 1, 16), tok.vocab_size(), tok.max_tokens());
  EXPECT_TRUE(config.text_conditional());
  EXPECT_EQ(config.cross_attention_resolutions, std::vector<int64_t>{8});
  UNet net(config);
  net->eval();
  {  // the layers that start at zero (conv_out, every block's last layer) made random, so that the condition shows
    torch::NoGradGuard no_grad;
    for (auto& p : net->named_parameters()) {
      if (p.key().find("conv_out") != std::string::npos || p.key().find("proj_out") != std::string::npos) {
        p.value().normal_(0.0, 0.1);
      }
    }
  }
  const auto null = net->null_condition(3, torch::kCPU);
  EXPECT_TRUE(null[0].equal(tok.encode("")));
  const auto x = torch::randn({2, 1, 16, 16});
  const auto t = torch::tensor({10, 500}, torch::kLong);
  const auto prompts = tok.encode(std::vector<std::string>{"3 left of 8", "8 left of 3"});
  const auto out = net->forward(x, t, prompts);
  ASSERT_EQ(out.sizes(), x.sizes());
  // undefined: ∅
  EXPECT_TRUE(torch::allclose(net->forward(x, t), net->forward(x, t, net->null_condition(2, torch::kCPU))));
  // the words' order reaches the output
  EXPECT_FALSE(torch::allclose(out[0], net->forward(x, t, prompts.flip(0))[0]));
  EXPECT_NE(error_of([&] {
              net->forward(x, t, torch::tensor({1, 2}, torch::kLong));
            }).find("token ids"),
            std::string::npos);
  // config: bounded, and one kind of condition at a time
  auto both = config;
  both.num_classes = 10;
  EXPECT_NE(error_of([&] { validate(both); }).find("takes no class labels"), std::string::npos);
  auto heads = config;
  heads.text_heads = 3;
  EXPECT_NE(error_of([&] { validate(heads); }).find("text_heads"), std::string::npos);
  EXPECT_EQ(to_json(unet_config_from_json(to_json(config))), to_json(config));
}

TEST(TextGuidance, MixesTheConditionalAndTheEmptyPromptsOutputsAndDropsWholeRows) {
  // a network that reports the sum of each row's ids: guidance's two halves are told apart
  ConditionalDenoiser net = [](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor& y) {
    return x * 0 + y.sum(1).to(torch::kFloat32).view({-1, 1, 1, 1});
  };
  const auto y = torch::tensor({1, 7, 9, 0, 1, 4, 0, 0}, torch::kLong).view({2, 4});
  const auto null_row = torch::tensor({1, 0, 0, 0}, torch::kLong);
  const auto guided = classifier_free_guidance(net, null_row, 2.0);
  const auto out = guided(torch::zeros({2, 1, 2, 2}), torch::zeros({2}, torch::kLong), y);
  // (1 + w)·Σy − w·Σ∅ = 3·17 − 2·1 and 3·5 − 2·1
  EXPECT_FLOAT_EQ(out[0][0][0][0].item<float>(), 49.0f);
  EXPECT_FLOAT_EQ(out[1][0][0][0].item<float>(), 13.0f);

  torch::manual_seed(4);
  const auto rows = torch::arange(2, 2 + 400 * 3, torch::kLong).view({400, 3});
  const auto nulls = torch::tensor({1, 0, 0}, torch::kLong).expand({400, 3}).contiguous();
  const auto dropped = drop_condition_rows(rows, nulls, 0.25);
  const auto is_null = (dropped == nulls).all(1), kept = (dropped == rows).all(1);
  EXPECT_TRUE((is_null | kept).all().item<bool>());  // whole rows, never a mixture
  const double fraction = is_null.to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(fraction, 0.25, 4 * std::sqrt(0.25 * 0.75 / 400));
  EXPECT_TRUE(drop_condition_rows(rows, nulls, 0.0).equal(rows));
  EXPECT_TRUE(drop_condition_rows(rows, nulls, 1.0).equal(nulls));
}

TEST(Captions, ComeFromTextFilesJsonLinesOrCsvAndEveryImageNeedsOne) {
  TempDir dir;
  auto image = [&](const std::string& path) { save_image_png(path, torch::zeros({1, 4, 4})); };
  auto make_tree = [&](const std::string& root) {
    run_command("mkdir -p " + root + "/train/a " + root + "/train/b");
    image(root + "/train/a/0.png");
    image(root + "/train/b/1.png");
  };
  // NAME.txt beside each image; a README.txt beside none is not a caption
  make_tree(dir / "txt");
  write_text(dir / "txt/train/a/0.txt", "3 left of 8\n");
  write_text(dir / "txt/train/b/1.txt", "a small 5 above a 1");
  write_text(dir / "txt/README.txt", "about this data");
  EXPECT_EQ(load_dataset(dir / "txt", Split::train).captions,
            (std::vector<std::string>{"3 left of 8", "a small 5 above a 1"}));
  // metadata.jsonl, file_name relative to its folder
  make_tree(dir / "jsonl");
  write_text(dir / "jsonl/train/metadata.jsonl",
             "{\"file_name\": \"b/1.png\", \"text\": \"one\"}\n{\"file_name\": \"a/0.png\", \"text\": \"zero\"}\n");
  EXPECT_EQ(load_dataset(dir / "jsonl", Split::train).captions, (std::vector<std::string>{"zero", "one"}));
  // metadata.csv with a quoted comma
  make_tree(dir / "csv");
  write_text(dir / "csv/train/metadata.csv", "file_name,text\na/0.png,\"zero, or nought\"\nb/1.png,one\n");
  EXPECT_EQ(load_dataset(dir / "csv", Split::train).captions, (std::vector<std::string>{"zero, or nought", "one"}));
  // no captions: none
  make_tree(dir / "plain");
  EXPECT_FALSE(load_dataset(dir / "plain", Split::train).captioned());
  // errors name the image, the file and the line
  make_tree(dir / "missing");
  write_text(dir / "missing/train/a/0.txt", "zero");
  EXPECT_NE(error_of([&] { load_dataset(dir / "missing", Split::train); }).find("'b/1.png' has no caption"),
            std::string::npos);
  make_tree(dir / "badjson");
  write_text(dir / "badjson/train/metadata.jsonl", "{\"file_name\": \"a/0.png\", \"text\": \"zero\"}\n{oops\n");
  EXPECT_NE(error_of([&] { load_dataset(dir / "badjson", Split::train); }).find("metadata.jsonl' line 2"),
            std::string::npos);
  make_tree(dir / "badcsv");
  write_text(dir / "badcsv/train/metadata.csv", "name,caption\na/0.png,zero\n");
  EXPECT_NE(error_of([&] { load_dataset(dir / "badcsv", Split::train); }).find("file_name"), std::string::npos);
  // inside an archive too
  if (image_archives_built()) {
    run_command("tar -czf " + dir / "captions.tar.gz" + " -C " + dir / "jsonl" + " train");
    EXPECT_EQ(load_dataset(dir / "captions.tar.gz", Split::train).captions, (std::vector<std::string>{"zero", "one"}));
  }
}

TEST(TextConditionalTraining, TheLossFallsAndTheModelSamplesFromAPrompt) {
  TempDir dir;
  auto data = load_dataset("captioned-digits", Split::train, DataOptions{16, 256});
  ASSERT_TRUE(data.captioned());
  ASSERT_EQ(data.captions.size(), 256u);
  CheckpointInfo info;
  info.tokenizer = Tokenizer::learn(data.captions);
  info.model =
      with_text(unet_config_by_name("tiny", 1, 16), info.tokenizer->vocab_size(), info.tokenizer->max_tokens());
  info.data = DataInfo{data.name, 1, 16, data.num_classes};
  const auto result = train(small_training(dir / "run"), info, data, torch::kCPU);
  // the log's first window against its last
  const auto losses = logged_losses(dir / "run");
  ASSERT_GE(losses.size(), 3u);
  EXPECT_LT(losses.back(), 0.8 * losses.front()) << "first " << losses.front() << ", last " << losses.back();
  EXPECT_EQ(result.step, 60);

  const auto pipeline = load_pipeline(dir / "run/checkpoint.safetensors");
  ASSERT_TRUE(pipeline.info().tokenizer.has_value());
  EXPECT_EQ(pipeline.info().tokenizer->words(), info.tokenizer->words());
  GenerateOptions g = default_generate_options(pipeline);
  g.n = 4;
  g.steps = 5;
  g.prompts = {data.captions[0]};
  g.guidance = 2.0;
  const auto guided = generate(pipeline, g);
  ASSERT_EQ(guided.sizes(), torch::IntArrayRef({4, 1, 16, 16}));
  EXPECT_TRUE(torch::isfinite(guided).all().item<bool>());
  // the same seed and another prompt: other images; a negative prompt: other images again
  g.prompts = {data.captions[1]};
  EXPECT_FALSE(torch::equal(generate(pipeline, g), guided));
  g.prompts = {data.captions[0]};
  g.negative_prompt = data.captions[1];
  EXPECT_FALSE(torch::equal(generate(pipeline, g), guided));
  g.negative_prompt.clear();
  EXPECT_TRUE(torch::equal(generate(pipeline, g), guided));
  // the ELBO of a text-conditional model is −log p(x_0 | caption); with every caption ∅ it is the
  // unconditional bound, draw for draw
  NllOptions nll;
  nll.n = 16;
  nll.t_samples = 4;
  nll.progress = false;
  const auto conditional = evaluate_nll(pipeline, data, nll);
  const auto unconditional = evaluate_nll(pipeline, data, nll, /*unconditional=*/true);
  auto empty_prompts = data;
  empty_prompts.captions.assign(data.size(), "");
  EXPECT_DOUBLE_EQ(evaluate_nll(pipeline, empty_prompts, nll).total.mean, unconditional.total.mean);
  EXPECT_NE(conditional.total.mean, unconditional.total.mean);
  EXPECT_TRUE(std::isfinite(conditional.total.mean));

  // a word it never read, a prompt per image that does not add up
  g.prompts = {"3 left of a cat"};
  EXPECT_NE(error_of([&] { generate(pipeline, g); }).find("'cat' is not in this model's vocabulary"),
            std::string::npos);
  g.prompts = {"3 left of 8", "8 left of 3"};
  EXPECT_NE(error_of([&] { generate(pipeline, g); }).find("2 prompts for 4 images"), std::string::npos);
}

TEST(PromptFollowing, ReadsTheDigitsOfRealCanvasesAndNotOfSwappedOnes) {
  const auto mnist_train = load_dataset("mnist", Split::train, DataOptions{0, 6000});
  const auto mnist_test = load_dataset("mnist", Split::test, DataOptions{0, 2000});
  ComposeOptions compose;
  compose.n = 400;
  compose.seed = 5;
  compose.split = Split::test;
  const auto canvases = compose_captioned_digits(mnist_test, compose);
  // every caption parses back to its placement
  for (size_t i = 0; i < canvases.captions.size(); ++i) {
    const auto p = placement_of(canvases.captions[i]);
    ASSERT_TRUE(p.has_value()) << canvases.captions[i];
    EXPECT_EQ(caption_of(*p), canvases.captions[i]);
    EXPECT_EQ(p->first, canvases.placements[i].first);
    EXPECT_EQ(p->relation, canvases.placements[i].relation);
  }
  EXPECT_FALSE(placement_of("3 near 8").has_value());
  EXPECT_FALSE(placement_of("a 3 left of 8").has_value());  // "a" only where a digit is small
  EXPECT_FALSE(placement_of("3 left of 8 and 1").has_value());

  ClassifierOptions o;
  o.epochs = 3;
  o.progress = false;
  auto classifier = train_classifier(digit_cells_dataset(mnist_train, 32), o);
  const auto images = from_uint8(canvases.images.images);
  const auto real = measure_prompt_following(classifier, images, canvases.placements);
  EXPECT_EQ(real.images, 400);
  EXPECT_GT(real.both, 0.85) << "first " << real.first << ", second " << real.second;
  // the same canvases asked for the other order: only the pairs of equal digits follow it
  auto swapped = canvases.placements;
  int64_t equal_pairs = 0;
  for (auto& p : swapped) {
    std::swap(p.first, p.second);
    equal_pairs += p.first == p.second;
  }
  const auto wrong = measure_prompt_following(classifier, images, swapped);
  EXPECT_LT(wrong.both, static_cast<double>(equal_pairs) / 400 + 0.05);
  std::printf("prompt following of real canvases %.3f (first %.3f, second %.3f); swapped %.3f\n", real.both, real.first,
              real.second, wrong.both);
}
