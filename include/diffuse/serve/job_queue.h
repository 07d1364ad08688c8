// One compute worker that runs jobs in the order they came, a bounded queue in front of it, and
// each job's events (started, a step with its previews, the result) kept for whoever follows
// the job: a server thread streaming them, or one waiting for the result.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace diffuse::serve {

enum class JobState { queued, running, done, failed, cancelled };
std::string to_string(JobState state);

// Thrown inside a job's work once the job is cancelled (Job::check_cancelled).
struct JobCancelled : std::runtime_error {
  JobCancelled() : std::runtime_error("cancelled") {}
};

class Job {
 public:
  explicit Job(std::string id) : id_(std::move(id)) {}
  const std::string& id() const { return id_; }

  // For the work: add an event ({"type": ..., ...}) for the job's followers.
  void emit(nlohmann::json event);
  // Throws JobCancelled once cancel() was called (the work calls it between steps).
  void check_cancelled() const;

  // For the clients.
  void cancel() { cancel_requested_ = true; }
  bool cancel_requested() const { return cancel_requested_; }
  JobState state() const;
  bool ended() const;
  // The events from index `from` on; waits up to `wait` while there are none and the job runs.
  std::vector<nlohmann::json> events_since(size_t from, std::chrono::milliseconds wait) const;
  // Waits until the job has ended (or `wait` passed); returns whether it has.
  bool wait_until_ended(std::chrono::milliseconds wait) const;
  // The work's return value once done; the error message once failed.
  nlohmann::json result() const;
  std::string error() const;
  // Seconds since the job started running (0 while queued) and the latest step event, if any.
  double seconds_running() const;
  nlohmann::json latest_step() const;

 private:
  friend class JobQueue;
  void set_state(JobState state, nlohmann::json result = {}, std::string error = {});

  const std::string id_;
  std::atomic<bool> cancel_requested_{false};
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  JobState state_ = JobState::queued;
  std::vector<nlohmann::json> events_;
  nlohmann::json result_, latest_step_;
  std::string error_;
  std::chrono::steady_clock::time_point started_;
};

using JobWork = std::function<nlohmann::json(Job&)>;

class JobQueue {
 public:
  // At most `max_waiting` jobs wait behind the running one; `setup` runs once on the worker
  // thread before its first job (the compute threads' count is a per-thread setting).
  explicit JobQueue(size_t max_waiting, std::function<void()> setup = {});
  ~JobQueue();
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Queues the work; nullptr when `max_waiting` jobs already wait or the queue has stopped.
  std::shared_ptr<Job> submit(JobWork work);
  // A job by id while it is kept (every waiting and running job, and the last ended ones).
  std::shared_ptr<Job> find(const std::string& id) const;
  size_t waiting() const;
  // Cancels a job: a waiting one ends at once, the running one at its next step. False where no
  // such job is kept or it has ended.
  bool cancel(const std::string& id);
  // The running job, if any.
  std::shared_ptr<Job> running() const;
  // No new jobs; the waiting ones are cancelled, the running one is cancelled and waited for.
  void stop();

  static constexpr size_t kEndedJobsKept = 32;

 private:
  void work_loop(std::function<void()> setup);
  void keep_ended(const std::string& id);  // under mutex_

  const size_t max_waiting_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<std::shared_ptr<Job>, JobWork>> waiting_;
  std::shared_ptr<Job> running_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::string> ended_order_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace diffuse::serve
