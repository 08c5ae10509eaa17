// ModelRunner — between the scheduler and the model (DESIGN.md section 2, "runner"): turns a
// host-side ForwardBatch into one step on the device and returns its logits or sampled tokens.
// It owns what the model's math does not care about: checking the batch, the KV cache slot of every
// row, the survivors' layout (the rows whose logits are wanted; llama_model.h says why SwiftKV's
// later layers run on them only), the index arrays' uploads, and CUDA graphs: decode steps are
// padded up to a few batch sizes and replayed whole; SwiftKV prefill steps replay the survivors'
// later layers. The engine and the eval scorer drive the model only through a runner.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/device_buffer.h"
#include "model/llama_model.h"
#include "model/step_inputs.h"
#include "runner/forward_batch.h"

namespace swiftkv {

struct RunnerOptions {
    // Record decode steps (and the SwiftKV survivors' later layers) as graphs and replay them, on
    // backends that support graphs (CUDA). Off: every op runs eagerly.
    bool graphs = true;
};

class ModelRunner {
public:
    ModelRunner(LlamaModel& model, const RunnerOptions& options = {});
    ~ModelRunner();
    ModelRunner(const ModelRunner&) = delete;
    ModelRunner& operator=(const ModelRunner&) = delete;

    LlamaModel& model() const { return model_; }

    // Sizes the workspace once for steps of up to max_tokens tokens from up to max_seqs sequences
    // whose contexts fit max_blocks_per_seq KV blocks. Steps beyond these bounds still run (the
    // workspace grows, and recorded graphs are dropped), but serving sizes it up front.
    void reserve(int64_t max_tokens, int64_t max_seqs, int64_t max_blocks_per_seq);

    // Runs one step. Writes K/V of every token to the cache and returns, in logits (host memory,
    // resized to [logits_indices.size(), vocab]), the logits at the requested rows.
    void forward(const ForwardBatch& batch, const KvCacheView& kv, std::vector<float>& logits);
    // Like forward, but samples on the backend and returns one token per logits row (params: one per
    // logits row, host memory); only the token ids cross to the host.
    void forward_sample(const ForwardBatch& batch, const KvCacheView& kv, const std::vector<SampleParams>& params,
                        std::vector<int32_t>& tokens);
    // forward_sample in two halves, so the host can work while the device runs the step: launch queues
    // the step and its sampling (on CUDA nothing waits for the device); wait blocks until the step is
    // done and returns its tokens. One step at a time: launch, then wait, before the next launch.
    void forward_sample_launch(const ForwardBatch& batch, const KvCacheView& kv, const std::vector<SampleParams>& params);
    void forward_sample_wait(std::vector<int32_t>& tokens);

    // Graph statistics (for tests and benchmarks): recorded graphs and replays so far.
    int64_t graphs_recorded() const { return graphs_recorded_; }
    int64_t graph_replays() const { return graph_replays_; }

private:
    enum class GraphMode { kNone, kWholeStep, kSurvivors };
    struct Step {
        StepInputs in;              // device inputs (row counts after padding when graphed)
        int64_t real_survivors = 0; // survivors before padding: the logits rows returned
        GraphMode mode = GraphMode::kNone;
    };

    void prepare(const ForwardBatch& batch, const KvCacheView& kv, Step& step);
    void run(const Step& step, const KvCacheView& kv);
    void ensure_index_buffers(int64_t rows, int64_t seqs, int64_t table_entries);
    void drop_graphs();

    LlamaModel& model_;
    Backend& backend_;
    bool use_graphs_ = false;
    int64_t reserved_blocks_ = 0;

    // Device index arrays of the current step, and their host staging.
    DeviceBuffer tokens_dev_, positions_dev_, slots_dev_, query_start_dev_, seq_lens_dev_, block_tables_dev_,
        logits_idx_dev_, surv_query_start_dev_, surv_positions_dev_, sample_params_dev_, sampled_dev_;
    std::vector<int32_t> h_tokens_, h_positions_, h_slots_, h_query_start_, h_seq_lens_, h_block_tables_,
        h_logits_idx_, h_surv_query_start_, h_surv_positions_;

    // Recorded graphs by (mode, padded batch, context bound, KV cache base).
    std::map<std::tuple<int, int64_t, int64_t, const void*>, std::unique_ptr<BackendGraph>> graphs_;
    int64_t graphs_recorded_ = 0;
    int64_t graph_replays_ = 0;
    int64_t pending_samples_ = -1;  // forward_sample_launch: tokens to fetch; -1: nothing launched
};

}  // namespace swiftkv
