// Sharing the cores with other processes. LibTorch's CPU threads are libgomp's: with its default
// spin count (300,000 spins before a waiting thread sleeps), a thread whose core another process
// holds stalls every parallel region's barrier, and a step takes 3× as long as on an idle machine
// (bench/busy_machine.sh, docs/PERFORMANCE.md).
#pragma once

namespace diffuse {

// Cores this process may run on (its affinity mask) that other processes leave free: the mask's
// size minus the runnable tasks other than the caller (/proc/stat's procs_running, the least of
// a few reads, so that a passing process is not counted), at least 1. Call it before any thread
// pool starts: the caller is counted as the one running task.
int free_cores();

// libgomp reads GOMP_SPINCOUNT once, when it is loaded (before main). Where neither it nor
// OMP_WAIT_POLICY is set, sets GOMP_SPINCOUNT=1000 (a few microseconds of spinning, then sleep)
// and executes this program again with the same arguments; returns only where it did not
// (either was set, or exec failed). Measured: as fast as the default on an idle machine, 1.6×
// faster than it beside one busy process.
void reexec_with_short_omp_spin(char** argv);

}  // namespace diffuse
