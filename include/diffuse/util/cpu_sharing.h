// Sharing the cores with other processes. LibTorch's CPU threads are libgomp's: with its default
// spin count (300,000 spins before a waiting thread sleeps), a thread whose core another process
// holds stalls every parallel region's barrier, and a step takes 3× as long as on an idle machine;
// one thread fewer per busy core keeps it near the idle time (bench/busy_machine.sh,
// docs/PERFORMANCE.md). A shorter spin (GOMP_SPINCOUNT=1000, set before the program starts)
// also helps against load that comes later, at 8 % of the idle speed, so it is the user's choice.
#pragma once

namespace diffuse {

// Cores this process may run on (its affinity mask) that other processes leave free: the mask's
// size minus the runnable tasks other than the caller (/proc/stat's procs_running, the least of
// a few reads, so that a passing process is not counted), at least 1. Call it before any thread
// pool starts: the caller is counted as the one running task.
int free_cores();

}  // namespace diffuse
