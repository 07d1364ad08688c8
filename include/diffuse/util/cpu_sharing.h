// Sharing the cores with other processes. LibTorch's CPU threads are libgomp's: with its default
// spin count (300,000 spins before a waiting thread sleeps), a thread whose core another process
// holds stalls every parallel region's barrier, and a step takes 3× as long as on an idle machine;
// one thread fewer per busy core keeps it near the idle time (bench/busy_machine.sh,
// docs/PERFORMANCE.md). A shorter spin (GOMP_SPINCOUNT=1000, set before the program starts)
// also helps against load that comes later, at 8 % of the idle speed, so it is the user's choice.
#pragma once

namespace diffuse {

// Cores this process may run on (its affinity mask) that other processes leave free: the mask's
// size minus the runnable tasks of other processes (/proc/stat's procs_running less this
// process's runnable threads, the least of a few reads 2 ms apart, so that a passing process is
// not counted), at least 1. Callable at any time, also while this process's threads run.
int free_cores();

// Whether a long run may change its thread count to follow the load (free_cores() between steps):
// the program's default, off where the user or a launcher chose a count (--threads, OMP_NUM_THREADS).
void set_threads_follow_load(bool follow);
bool threads_follow_load();

// The thread count a run that follows the load should take now: free_cores() where
// threads_follow_load() and at least `min_seconds` passed since this process last looked (a look
// reads /proc for ~10 ms); else `current`. Long CPU loops ask between steps (training at each log
// window, sampling every few seconds).
int threads_for_load(int current, double min_seconds);

}  // namespace diffuse
