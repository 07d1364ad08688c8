// The default thread count leaves a core to each other runnable task.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "diffuse/util/cpu_sharing.h"

TEST(CpuSharing, ABusyTaskTakesACoreFromTheDefault) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cores = CPU_COUNT(&set);
  const int idle = diffuse::free_cores();
  EXPECT_GE(idle, 1);
  EXPECT_LE(idle, cores);
  // another process spinning (a thread of this one would count as its own, not as another task)
  const pid_t busy = fork();
  ASSERT_GE(busy, 0);
  if (busy == 0) {
    for (volatile int i = 0;; i = i + 1) {
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int with_busy = diffuse::free_cores();
  kill(busy, SIGKILL);
  waitpid(busy, nullptr, 0);
  EXPECT_LE(with_busy, std::max(1, cores - 1));  // the spinning process is runnable in every read
  EXPECT_GE(with_busy, 1);
}

// Long loops ask between steps; the count changes only where the user left it to the program,
// and a look at /proc happens at most as often as asked.
TEST(CpuSharing, TheCountFollowsTheLoadOnlyWhereAllowedAndNotMoreOftenThanAsked) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cores = CPU_COUNT(&set);
  const int chosen = cores + 5;  // a count no look at the load can return
  diffuse::set_threads_follow_load(false);
  EXPECT_EQ(diffuse::threads_for_load(chosen, 0.0), chosen);  // --threads or OMP_NUM_THREADS: kept
  diffuse::set_threads_follow_load(true);
  const int looked = diffuse::threads_for_load(chosen, 0.0);
  EXPECT_GE(looked, 1);
  EXPECT_LE(looked, cores);
  EXPECT_EQ(diffuse::threads_for_load(chosen, 3600.0), chosen);  // looked just now: not again within the hour
  diffuse::set_threads_follow_load(false);
}
