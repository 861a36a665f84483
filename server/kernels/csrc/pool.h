// A small fork-join thread pool: workers spin briefly between jobs, then sleep.
//
// Work is always split by output element (rows, tiles, heads), never inside a reduction, so the
// number of threads changes which thread computes an element but never how it is computed.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "simd.h"

class Pool {
 public:
  using Job = void (*)(void* arg, int thread, int n_threads);

  explicit Pool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
    for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t] { work(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return n_; }

  // Run job(arg, t, n) on every thread t in [0, n) and wait for all of them.
  void run(Job job, void* arg) {
    if (n_ == 1) { job(arg, 0, 1); return; }
    job_ = job;
    arg_ = arg;
    pending_.store(n_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job(arg, 0, n_);
    // Spin, then yield: on an oversubscribed machine the worker we wait for may need this core.
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < kSpinBeforeYield) ssk_pause(); else std::this_thread::yield();
    }
  }

  // Split [0, count) into n contiguous ranges; thread t gets [begin, end).
  static void range(int64_t count, int t, int n, int64_t* begin, int64_t* end) {
    int64_t per = count / n, extra = count % n;
    *begin = t * per + (t < extra ? t : extra);
    *end = *begin + per + (t < extra ? 1 : 0);
  }

 private:
  void work(int t) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = gen_.load(std::memory_order_acquire);
      if (g == seen) {
        auto start = std::chrono::steady_clock::now();
        int spins = 0;
        while ((g = gen_.load(std::memory_order_acquire)) == seen) {
          if (++spins < kSpinBeforeYield) ssk_pause(); else std::this_thread::yield();
          if (spins % 256 == 0 &&
              std::chrono::steady_clock::now() - start > std::chrono::microseconds(kSpinMicros)) {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return gen_.load(std::memory_order_acquire) != seen; });
          }
        }
      }
      seen = g;
      if (stop_) return;
      job_(arg_, t, n_);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  static constexpr int kSpinMicros = 300;       // then sleep until the next job
  static constexpr int kSpinBeforeYield = 2000; // pause instructions before yielding the core
  const int n_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  Job job_ = nullptr;
  void* arg_ = nullptr;
  bool stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
};

// Run fn(t, n) on the pool (a lambda; no allocation).
template <class Fn>
static inline void parallel(Pool& pool, Fn&& fn) {
  pool.run([](void* a, int t, int n) { (*static_cast<Fn*>(a))(t, n); }, (void*)&fn);
}
