#include "diffuse/serve/job_queue.h"

#include <c10/util/Exception.h>

#include <random>

namespace diffuse::serve {

std::string to_string(JobState state) {
  switch (state) {
    case JobState::queued:
      return "queued";
    case JobState::running:
      return "running";
    case JobState::done:
      return "done";
    case JobState::failed:
      return "failed";
    case JobState::cancelled:
      return "cancelled";
  }
  return "unknown";
}

void Job::emit(nlohmann::json event) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (event.value("type", "") == "step") latest_step_ = event;
  events_.push_back(std::move(event));
  changed_.notify_all();
}

void Job::check_cancelled() const {
  if (cancel_requested_) throw JobCancelled();
}

JobState Job::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

bool Job::ended() const {
  const auto s = state();
  return s == JobState::done || s == JobState::failed || s == JobState::cancelled;
}

std::vector<nlohmann::json> Job::events_since(size_t from, std::chrono::milliseconds wait) const {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, wait, [&] {
    return events_.size() > from || state_ == JobState::done || state_ == JobState::failed ||
           state_ == JobState::cancelled;
  });
  if (from >= events_.size()) return {};
  return {events_.begin() + static_cast<std::ptrdiff_t>(from), events_.end()};
}

bool Job::wait_until_ended(std::chrono::milliseconds wait) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, wait, [&] {
    return state_ == JobState::done || state_ == JobState::failed || state_ == JobState::cancelled;
  });
}

nlohmann::json Job::result() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return result_;
}

std::string Job::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

double Job::seconds_running() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == JobState::queued) return 0.0;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

nlohmann::json Job::latest_step() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return latest_step_;
}

void Job::set_state(JobState state, nlohmann::json result, std::string error) {
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = state;
  if (state == JobState::running) started_ = std::chrono::steady_clock::now();
  nlohmann::json event{{"type", to_string(state)}};
  if (state == JobState::done) {
    result_ = std::move(result);
    event["result"] = result_;
  }
  if (state == JobState::failed) {
    error_ = std::move(error);
    event["error"] = error_;
  }
  events_.push_back(std::move(event));
  changed_.notify_all();
}

namespace {

// 16 hexadecimal digits from the system's entropy: one client cannot guess another's job.
std::string random_id() {
  static std::mutex mutex;
  static std::mt19937_64 gen{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mutex);
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(gen()));
  return buf;
}

}  // namespace

JobQueue::JobQueue(size_t max_waiting, std::function<void()> setup)
    : max_waiting_(max_waiting), worker_([this, setup = std::move(setup)] { work_loop(setup); }) {}

JobQueue::~JobQueue() { stop(); }

std::shared_ptr<Job> JobQueue::submit(JobWork work) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_ || waiting_.size() >= max_waiting_) return nullptr;
  auto job = std::make_shared<Job>(random_id());
  job->emit({{"type", "queued"}, {"ahead", waiting_.size() + (running_ ? 1 : 0)}});
  jobs_[job->id()] = job;
  waiting_.emplace_back(job, std::move(work));
  wake_.notify_one();
  return job;
}

std::shared_ptr<Job> JobQueue::find(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

size_t JobQueue::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return waiting_.size();
}

bool JobQueue::cancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->first->id() != id) continue;
    it->first->cancel();
    it->first->set_state(JobState::cancelled);
    waiting_.erase(it);
    keep_ended(id);
    return true;
  }
  if (running_ && running_->id() == id) {
    running_->cancel();
    return true;
  }
  return false;
}

void JobQueue::keep_ended(const std::string& id) {
  ended_order_.push_back(id);
  while (ended_order_.size() > kEndedJobsKept) {
    jobs_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

std::shared_ptr<Job> JobQueue::running() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return running_;
}

void JobQueue::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (auto& [job, work] : waiting_) job->set_state(JobState::cancelled);
    waiting_.clear();
    if (running_) running_->cancel();
    wake_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
}

void JobQueue::work_loop(std::function<void()> setup) {
  if (setup) setup();
  for (;;) {
    std::shared_ptr<Job> job;
    JobWork work;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !waiting_.empty(); });
      if (waiting_.empty()) return;  // stopping, nothing left
      std::tie(job, work) = std::move(waiting_.front());
      waiting_.pop_front();
      running_ = job;
    }
    // The job ends only once it is no longer the running one: a client that sees its last event
    // and then asks /api/health finds the worker free.
    JobState end = JobState::cancelled;
    nlohmann::json result;
    std::string error;
    if (!job->cancel_requested()) {
      job->set_state(JobState::running);
      try {
        result = work(*job);
        end = JobState::done;
      } catch (const JobCancelled&) {
        end = JobState::cancelled;
      } catch (const c10::Error& e) {  // LibTorch's message without its backtrace
        end = job->cancel_requested() ? JobState::cancelled : JobState::failed;
        error = e.what_without_backtrace();
      } catch (const std::exception& e) {
        end = job->cancel_requested() ? JobState::cancelled : JobState::failed;
        error = e.what();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      running_.reset();
    }
    job->set_state(end, std::move(result), error);
    std::lock_guard<std::mutex> lock(mutex_);
    keep_ended(job->id());
  }
}

}  // namespace diffuse::serve
