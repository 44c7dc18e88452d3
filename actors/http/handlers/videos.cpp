// /v1/videos: video generation as jobs (create, poll, fetch, delete). A job's generation runs
// detached from any connection; its MP4 is kept in memory until the job is forgotten.
#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/stream_job.hpp"

namespace tutti::http {

class VideoJob final : public GenerationOwner {
 public:
  static constexpr int kMaxActive = 4;    // queued or in progress at once; more get 429
  static constexpr size_t kMaxKept = 64;  // finished jobs beyond this are forgotten, oldest first
  enum class Status { Queued, InProgress, Completed, Failed };

  VideoJob(std::string id, MediaRequest req, std::string owner) : id_(std::move(id)), req_(std::move(req)), owner_(std::move(owner)) {}
  std::shared_ptr<Generation> generation;

  const std::string& owner() const { return owner_; }  // the key that created it: only it (or an admin) sees it
  bool active() const { return status_ == Status::Queued || status_ == Status::InProgress; }
  bool completed() const { return status_ == Status::Completed; }
  const std::vector<uint8_t>& content() const { return mp4_; }
  long created() const { return created_; }
  const char* status_name() const {
    static const char* const kNames[] = {"queued", "in_progress", "completed", "failed"};
    return kNames[int(status_)];
  }

  json to_json() const {
    json j = {{"id", id_}, {"object", "video"}, {"model", req_.model}, {"status", status_name()}, {"progress", int(progress_ * 100)},
              {"created_at", created_}, {"seconds", json(req_.seconds).dump()},
              {"size", std::to_string(req_.out_width) + "x" + std::to_string(req_.out_height)}};
    if (!error_.empty()) j["error"] = {{"code", "generation_failed"}, {"message", error_}};
    if (!active())
      j["usage"] = {{"input_tokens", prompt_tokens_}, {"output_tokens", output_tokens_},
                    {"output_tokens_details", {{"video_tokens", output_tokens_}}}};
    return j;
  }

  void on_prompt(int32_t) override { status_ = Status::InProgress; }
  void on_media(MediaChunk& c, int32_t tokens) override {
    generation->delivered(tokens);  // the MP4 is kept in memory: nothing waits on a client
    output_tokens_ = tokens;
    mp4_.insert(mp4_.end(), c.bytes.begin(), c.bytes.end());
    const int frames_total = std::max(1, int(std::lround(req_.seconds * 4)));
    status_ = Status::InProgress;
    progress_ = std::min(0.99, double(c.frames) / frames_total);
  }
  void on_end(const GenerationEnd& e) override {
    prompt_tokens_ = e.prompt_tokens, output_tokens_ = e.output_tokens;
    if (e.ok()) {
      status_ = Status::Completed, progress_ = 1.0;
      return;
    }
    status_ = Status::Failed;
    error_ = e.message.empty() ? error_code_name(e.code) : e.message;
    mp4_.clear();
  }
  void cancel() {
    if (!active()) return;
    generation->abandon("cancelled");
    status_ = Status::Failed;
    error_ = "cancelled";
    mp4_.clear();
  }

 private:
  std::string id_;
  MediaRequest req_;
  std::string owner_;
  long created_ = ServerState::unix_now();
  Status status_ = Status::Queued;
  std::string error_;
  double progress_ = 0;
  std::vector<uint8_t> mp4_;
  int32_t prompt_tokens_ = 0, output_tokens_ = 0;
};

void handle_video_create(HttpExchange& ex) {
  ServerState& srv = ex.server();
  auto body = json_or_form_body(ex);  // the SDK sends multipart/form-data, curl users JSON
  if (const ApiError* e = std::get_if<ApiError>(&body)) return ex.respond_error(*e);
  auto parsed = parse_media_request(MediaKind::Video, std::get<std::string>(body), srv.cfg.modalities, srv.models->served(), srv.cfg.max_media_seconds,
                                    srv.cfg.classes.of(MediaKind::Video));
  if (const ApiError* e = std::get_if<ApiError>(&parsed)) return ex.respond_error(*e);
  MediaRequest req = std::get<MediaRequest>(std::move(parsed));
  req.request.id = srv.next_id++;
  const std::string id = ServerState::unguessable_id("video_");
  GenerationSpec spec;
  spec.key = ex.key();
  spec.endpoint = "/v1/videos";
  spec.model = req.model;
  spec.record_id = id;
  spec.request = req.request;
  spec.seed_from_id = true;
  int active = 0;
  for (auto& [job_id, job] : srv.jobs) active += job->active();
  std::optional<ApiError> refusal = key_job_limit(srv, ex.key());
  if (!refusal && active >= VideoJob::kMaxActive)
    refusal = ApiError{ErrorCode::too_many_jobs, std::to_string(active) + " videos are already being generated; try again later"};
  if (refusal) {
    Generation::record_refusal(srv, spec, *refusal);  // a job refused before it starts has its record too
    return ex.respond_error(*refusal);
  }
  // Forget the oldest finished jobs beyond the limit.
  while (srv.jobs.size() >= VideoJob::kMaxKept) {
    auto oldest = srv.jobs.end();
    for (auto it = srv.jobs.begin(); it != srv.jobs.end(); ++it)
      if (!it->second->active() && (oldest == srv.jobs.end() || it->second->created() < oldest->second->created())) oldest = it;
    if (oldest == srv.jobs.end()) break;
    srv.jobs.erase(oldest);
  }
  const ModalityInfo* m = srv.cfg.modalities.find(Modality::Video);
  spec.output = [w = req.out_width, h = req.out_height, fps = m->frame_rate] {
    return std::shared_ptr<MediaOutput>(make_video_output(w, h, fps));
  };
  auto job = std::make_shared<VideoJob>(id, req, ex.key());
  auto started = Generation::start(srv, std::move(spec), job);
  if (const ApiError* e = std::get_if<ApiError>(&started)) return ex.respond_error(*e);
  job->generation = std::get<std::shared_ptr<Generation>>(std::move(started));
  srv.jobs[id] = job;
  ex.respond_json(200, job->to_json().dump());
}

namespace {
// The job the route's {id} names, or a 404 answered: also for another key's job, which this
// client is never told exists.
VideoJob* find_job(HttpExchange& ex) {
  auto it = ex.server().jobs.find(ex.params().at(0));
  if (it != ex.server().jobs.end() && ex.may_see(it->second->owner())) return it->second.get();
  ex.respond_error(ApiError{ErrorCode::not_found, "no video job '" + ex.params().at(0) + "'", "", 0, "video_not_found"});
  return nullptr;
}
}  // namespace

void handle_video_list(HttpExchange& ex) {
  json data = json::array();
  for (const auto& [id, job] : ex.server().jobs)
    if (ex.may_see(job->owner())) data.push_back(job->to_json());
  ex.respond_json(200, json{{"object", "list"}, {"data", data}}.dump());
}

void handle_video_get(HttpExchange& ex) {
  if (VideoJob* job = find_job(ex)) ex.respond_json(200, job->to_json().dump());
}

void handle_video_delete(HttpExchange& ex) {  // cancel if running, and forget it
  VideoJob* job = find_job(ex);
  if (!job) return;
  job->cancel();
  json j = job->to_json();
  j["deleted"] = true;
  ex.server().jobs.erase(ex.params().at(0));
  ex.respond_json(200, j.dump());
}

void handle_video_content(HttpExchange& ex) {
  VideoJob* job = find_job(ex);
  if (!job) return;
  if (!job->completed())
    return ex.respond_error(ApiError{ErrorCode::not_ready, "video '" + ex.params().at(0) + "' is " + job->status_name()});
  ex.respond_bytes("video/mp4", std::string(job->content().begin(), job->content().end()));
}

int active_video_jobs(ServerState& srv, const std::string& key) {
  int n = 0;
  for (const auto& [id, job] : srv.jobs) n += job->active() && job->owner() == key;
  return n;
}

std::optional<ApiError> key_job_limit(ServerState& srv, const std::string& key) {
  const int limit = srv.cfg.key_limits.jobs_per_key;
  if (limit <= 0) return std::nullopt;
  const int running = active_video_jobs(srv, key) + active_stream_jobs(srv, key);
  if (running < limit) return std::nullopt;
  return ApiError{ErrorCode::too_many_jobs, "the key's limit of " + std::to_string(limit) + " jobs at once is reached", "", 5};
}

void stop_all_jobs(ServerState& srv) {
  for (auto& [id, job] : srv.jobs) job->cancel();
  stream_jobs_stop_all(srv);
}

}  // namespace tutti::http
