// ThreadPool — a fixed set of workers for data-parallel kernels. parallel_for splits [0, n) into
// contiguous chunks, one per thread (the calling thread takes chunk 0), and returns when all are done.
// Workers spin briefly before sleeping, because kernels are issued back to back in a forward pass.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace swiftkv {

class ThreadPool {
public:
    explicit ThreadPool(int num_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return int(workers_.size()) + 1; }

    // fn(begin, end, thread_index) over chunks of [0, n); at most size() chunks, none empty.
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

    // The process-wide pool used by CPU kernels; sized on first use (set_global_threads before that).
    static ThreadPool& global();
    static void set_global_threads(int num_threads);

private:
    void worker_loop(int index);

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
    int64_t job_n_ = 0;
    int job_chunks_ = 0;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    bool stop_ = false;
};

}  // namespace swiftkv
