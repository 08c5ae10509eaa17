#include "core/thread_pool.h"

#include <algorithm>
#include <memory>

namespace swiftkv {

namespace {
int g_requested_threads = 0;
std::unique_ptr<ThreadPool> g_pool;
std::once_flag g_pool_once;
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
    const int n = std::max(1, num_threads);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    const int chunks = int(std::min<int64_t>(n, size()));
    if (chunks == 1) {
        fn(0, n, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        job_ = &fn;
        job_n_ = n;
        job_chunks_ = chunks;
        pending_.store(chunks - 1);
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    fn(0, n / chunks, 0);
    // Wait for the workers; they finish within microseconds in a busy forward pass.
    while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        // Spin a little for the next job before sleeping.
        for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) {
        }
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen || stop_; });
        if (stop_) return;
        seen = generation_.load();
        const auto* fn = job_;
        const int64_t n = job_n_;
        const int chunks = job_chunks_;
        lock.unlock();
        if (index < chunks) {
            const int64_t begin = n * index / chunks;
            const int64_t end = n * (index + 1) / chunks;
            (*fn)(begin, end, index);
            pending_.fetch_sub(1, std::memory_order_release);
        }
    }
}

ThreadPool& ThreadPool::global() {
    std::call_once(g_pool_once, [] {
        int n = g_requested_threads;
        if (n <= 0) n = int(std::max(1u, std::thread::hardware_concurrency()));
        g_pool = std::make_unique<ThreadPool>(n);
    });
    return *g_pool;
}

void ThreadPool::set_global_threads(int num_threads) { g_requested_threads = num_threads; }

}  // namespace swiftkv
