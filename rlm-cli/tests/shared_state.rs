//! `--cache-dir` and `--redis` end to end: `rlm` processes against the loopback mock server
//! and a real `redis-server` on a loopback port, counting at the server what reached it.
//!
//! The harness is `rlm_tests::harness::Suite` (see `main`): without `redis-server` the Redis
//! tests show as ignored in the summary line, not as passed; under `CI=true` they run and
//! fail loudly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rlm_tests::{MockServer, RedisServer, Reply, ServerRequest, scripted_turn};
use serde_json::Value;

const ROOT: &str = "root-model";
const SUB: &str = "sub-model";

/// A root model that sends `calls` distinct sub-calls built from the context, 8 at a time,
/// and answers with how many came back.
fn script(calls: usize) -> Vec<String> {
    vec![format!(
        "```repl\nlet p = [];\nfor i in 0..{calls} {{ p.push(`item ${{i}}: ${{context}}`); }}\n\
         let r = llm_batch(p, 8);\nlet ok = r.filter(|x| !x.starts_with(\"Error\")).len();\n\
         FINAL(`answers: ${{ok}}`);\n```"
    )]
}

async fn server(calls: usize, latency: Duration) -> MockServer {
    let replies = script(calls);
    MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            scripted_turn(request, &replies)
        } else {
            Reply::completion_for(request, format!("seen {}", request.last_user().len()))
                .after(latency)
        }
    })
    .await
    .expect("the mock server starts")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("rlm-cli-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("a file");
        path.to_string_lossy().into_owned()
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rlm(server: &MockServer, context: &str, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rlm"));
    command
        .args(["run", "--base-url", &server.base_url(), "--model", ROOT])
        .args(["--sub-model", SUB, "--max-retries", "0", "--json"])
        .args(["--query", "count", "--context", context])
        .args(extra);
    for var in [
        "RLM_CACHE_DIR",
        "RLM_REDIS_URL",
        "RUST_LOG",
        "OPENAI_BASE_URL",
    ] {
        command.env_remove(var);
    }
    command
        .env("OPENAI_API_KEY", "sk-test")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits for `child`: its exit status, its `--json` object, its stderr.
async fn finish(child: tokio::process::Child) -> (Option<i32>, Value, String) {
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("rlm finished (safety bound, not a timing assertion)")
        .expect("rlm's output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code(), json, stderr)
}

async fn run(server: &MockServer, context: &str, extra: &[&str]) -> (Option<i32>, Value, String) {
    finish(rlm(server, context, extra).spawn().expect("rlm starts")).await
}

fn sub_requests(server: &MockServer) -> Vec<ServerRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.model() == SUB)
        .collect()
}

async fn a_disk_cache_answers_a_rerun_in_a_new_process() {
    let dir = TempDir::new("disk");
    let context = dir.file("context.txt", "the same corpus");
    let cache = dir.path().join("cache");
    let cache = cache.to_string_lossy().into_owned();
    let server = server(12, Duration::ZERO).await;

    let (code, json, stderr) = run(&server, &context, &["--cache-dir", &cache]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 12");
    assert_eq!(sub_requests(&server).len(), 12);
    assert_eq!(json["cache"]["disk_hits"], 0, "{json}");
    assert_eq!(json["cache"]["upstream_calls"], 12, "{json}");

    server.reset();
    let (code, json, stderr) = run(&server, &context, &["--cache-dir", &cache]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 12");
    assert_eq!(
        sub_requests(&server).len(),
        0,
        "every sub-call came from disk"
    );
    assert_eq!(json["cache"]["disk_hits"], 12, "{json}");
    assert_eq!(json["cache"]["redis_hits"], 0, "{json}");
    // Answered by the disk tier: none was sent upstream.
    assert_eq!(json["cache"]["upstream_calls"], 0, "{json}");

    // --no-cache bypasses it.
    server.reset();
    let (code, _, stderr) = run(&server, &context, &["--cache-dir", &cache, "--no-cache"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sub_requests(&server).len(), 12);
}

async fn a_cache_dir_that_cannot_be_used_is_a_clear_error() {
    let dir = TempDir::new("baddir");
    let context = dir.file("context.txt", "text");
    let blocker = dir.file("not-a-dir", "a file");
    let server = server(1, Duration::ZERO).await;
    let (code, json, stderr) = run(&server, &context, &["--cache-dir", &blocker]).await;
    assert_eq!(code, Some(4), "{stderr}");
    // With --json a failure is still one object on stdout.
    assert_eq!(json["error"]["kind"], "input", "{json}");
    assert_eq!(json["exit_code"], 4, "{json}");
    assert!(stderr.contains("--cache-dir"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Checks a run that went on without its disk cache: answered, every sub-call sent, and one
/// warning naming the cache on stderr and in `--json`'s `warnings`.
fn went_on_without_the_disk_cache(
    server: &MockServer,
    (code, json, stderr): (Option<i32>, Value, String),
    calls: usize,
) {
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], format!("answers: {calls}"), "{json}");
    assert_eq!(sub_requests(server).len(), calls, "every sub-call was sent");
    assert_eq!(json["cache"]["disk_hits"], 0, "{json}");
    let warnings: Vec<&str> = json["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{json}");
    assert!(
        warnings[0].contains("--cache-dir") && warnings[0].contains("without the disk cache"),
        "{json}"
    );
    let logged: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(logged.len(), 1, "warned once: {stderr}");
    assert!(logged[0].contains("disk cache"), "{stderr}");
}

async fn a_corrupt_or_truncated_cache_file_is_a_warning_not_a_failure() {
    let dir = TempDir::new("corrupt");
    let context = dir.file("context.txt", "a corpus");
    let cache = dir.path().join("cache");
    let file = cache.join("rlm-cache.sqlite3");
    let cache = cache.to_string_lossy().into_owned();
    let server = server(5, Duration::ZERO).await;

    // A real cache, then cut short: its pages no longer add up.
    let (code, json, stderr) = run(&server, &context, &["--cache-dir", &cache]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 5");
    let whole = std::fs::read(&file).expect("the cache file");
    assert!(whole.len() > 8192, "{} bytes", whole.len());
    std::fs::write(&file, &whole[..8192]).expect("a truncated cache file");
    server.reset();
    let outcome = run(&server, &context, &["--cache-dir", &cache]).await;
    went_on_without_the_disk_cache(&server, outcome, 5);

    // Not a database at all.
    std::fs::write(
        &file,
        "these bytes are not an SQLite database\n".repeat(100),
    )
    .expect("a corrupt cache file");
    server.reset();
    let outcome = run(&server, &context, &["--cache-dir", &cache]).await;
    went_on_without_the_disk_cache(&server, outcome, 5);
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        kept.starts_with("these bytes"),
        "the file is left as it was, for its owner to look at"
    );
}

/// Makes `file` read-only for this process, even for root (whom permissions do not stop):
/// `chmod 444`, then, if writing still works, `chattr +i`. Whether it worked.
fn make_read_only(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let writable = || std::fs::OpenOptions::new().append(true).open(file).is_ok();
    let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444));
    if writable() {
        let _ = std::process::Command::new("chattr")
            .arg("+i")
            .arg(file)
            .stderr(Stdio::null())
            .status();
    }
    !writable()
}

/// Whether this process can make a file read-only for itself ([`make_read_only`]).
fn can_make_read_only() -> bool {
    let dir = TempDir::new("probe");
    let file = dir.path().join("probe");
    if std::fs::write(&file, "probe").is_err() {
        return false;
    }
    let done = make_read_only(&file);
    make_writable(&file);
    done
}

/// Undoes [`make_read_only`], so the file can be removed.
fn make_writable(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(file)
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644));
}

async fn a_read_only_cache_file_is_a_warning_not_a_failure() {
    let dir = TempDir::new("readonly");
    let context = dir.file("context.txt", "a corpus");
    let cache = dir.path().join("cache");
    let file = cache.join("rlm-cache.sqlite3");
    let cache = cache.to_string_lossy().into_owned();
    let server = server(4, Duration::ZERO).await;
    let (code, _, stderr) = run(&server, &context, &["--cache-dir", &cache]).await;
    assert_eq!(code, Some(0), "{stderr}");
    if !make_read_only(&file) {
        make_writable(&file);
        panic!("cannot make a file read-only here (root without a working chattr?)");
    }
    server.reset();
    let outcome = run(&server, &context, &["--cache-dir", &cache]).await;
    make_writable(&file);
    went_on_without_the_disk_cache(&server, outcome, 4);
}

async fn a_redis_url_this_build_cannot_use_is_a_warning_not_a_failure() {
    let dir = TempDir::new("tls");
    let context = dir.file("context.txt", "text");
    let server = server(3, Duration::ZERO).await;
    // TLS: a Redis URL, but this build has no TLS for Redis.
    let url = "rediss://:secret-pw@127.0.0.1:6390";
    let (code, json, stderr) = run(&server, &context, &["--redis", url, "--rpm", "600"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 3", "{json}");
    assert_eq!(sub_requests(&server).len(), 3);
    let warnings = json["warnings"].to_string();
    assert!(
        warnings.contains("--redis") && warnings.contains("without Redis"),
        "{json}"
    );
    let logged: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(logged.len(), 1, "warned once: {stderr}");
    assert!(!stderr.contains("secret-pw") && !warnings.contains("secret-pw"));
}

async fn four_processes_share_one_rate_limit_through_redis() {
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = TempDir::new("pacing");
    let server = server(30, Duration::ZERO).await;
    let url = redis.url();
    let children: Vec<_> = (0..4)
        .map(|i| {
            let context = dir.file(&format!("c{i}.txt"), &format!("worker {i}'s corpus"));
            rlm(&server, &context, &["--rpm", "600", "--redis", &url])
                .spawn()
                .expect("rlm starts")
        })
        .collect();
    for child in children {
        let (code, json, stderr) = finish(child).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(json["answer"], "answers: 30", "{json}");
        assert!(!stderr.contains("WARN"), "{stderr}");
    }
    let subs = sub_requests(&server);
    assert_eq!(subs.len(), 120);
    // 600 a minute: a burst of 10, then 10 a second, across all four processes. Checked on
    // the shared books themselves (each admission, dated by Redis when it was decided): the
    // server's arrival times would move with the machine's load.
    let admitted = admissions(&redis, "rlm:pace:sub-model:req");
    assert_eq!(admitted.iter().map(|(_, n)| n).sum::<u64>(), 120);
    let most = most_within(&admitted, 1_000_000);
    eprintln!("at most {most} sub-calls were let through within one second");
    assert!(most <= 20, "{most} sub-calls let through within one second");
    assert!(most_within(&admitted, 60_000_000) <= 600);
    // Sharing is what makes it slow: 110 after the burst at ~9.85 a second take over 11 s,
    // counted from the root's first request (every sub-call is sent after it), so load can
    // only lengthen it. Four processes pacing alone would be done in about 2 s.
    let first_root = server
        .requests()
        .into_iter()
        .filter(|r| r.model() == ROOT)
        .map(|r| r.at)
        .min()
        .expect("the roots were asked");
    let last = subs.iter().map(|r| r.at).max().expect("arrivals");
    let took = last - first_root;
    assert!(took >= Duration::from_secs(11), "all within {took:?}");
}

/// The entries of the Redis list `key` (the shared pacing books: `MICROS:COUNT`, one per
/// millisecond that admitted requests, as the limiter itself reads them), read with one
/// RESP `LRANGE`.
fn admissions(redis: &RedisServer, key: &str) -> Vec<(u64, u64)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", redis.port())).expect("Redis answers");
    let command = format!(
        "*4\r\n$6\r\nLRANGE\r\n${}\r\n{key}\r\n$1\r\n0\r\n$2\r\n-1\r\n",
        key.len()
    );
    stream.write_all(command.as_bytes()).expect("a request");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout (safety bound)");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(entries) = parse_array(&reply) {
            return entries
                .iter()
                .map(|entry| {
                    let (at, count) = entry.split_once(':').expect("MICROS:COUNT");
                    // Lua writes its numbers as doubles (`1.7653080081234e+15`).
                    let at: f64 = at.parse().expect("microseconds");
                    let count: f64 = count.parse().expect("a count");
                    (at as u64, count as u64)
                })
                .collect();
        }
        let n = stream.read(&mut chunk).expect("Redis's reply");
        assert!(n > 0, "Redis closed the connection");
        reply.extend_from_slice(&chunk[..n]);
    }
}

/// A whole RESP array of bulk strings, or `None` while more bytes are needed.
fn parse_array(reply: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(reply).ok()?;
    let (head, mut rest) = text.split_once("\r\n")?;
    let count: usize = head.strip_prefix('*')?.parse().ok()?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, tail) = rest.split_once("\r\n")?;
        let len: usize = len.strip_prefix('$')?.parse().ok()?;
        if tail.len() < len + 2 {
            return None;
        }
        items.push(tail[..len].to_owned());
        rest = &tail[len + 2..];
    }
    Some(items)
}

/// The most admissions within any window of `window` microseconds.
fn most_within(admitted: &[(u64, u64)], window: u64) -> u64 {
    let mut best = 0;
    for (i, (start, _)) in admitted.iter().enumerate() {
        let total: u64 = admitted[i..]
            .iter()
            .take_while(|(at, _)| at - start < window)
            .map(|(_, n)| n)
            .sum();
        best = best.max(total);
    }
    best
}

async fn a_second_run_is_answered_from_the_shared_cache() {
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = TempDir::new("shared");
    let context = dir.file("context.txt", "one corpus, many workers");
    let server = server(10, Duration::ZERO).await;
    let url = redis.url();
    let (code, json, stderr) = run(&server, &context, &["--redis", &url]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sub_requests(&server).len(), 10);
    assert_eq!(json["cache"]["redis_hits"], 0);

    server.reset();
    let (code, json, stderr) = run(&server, &context, &["--redis", &url]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 10");
    assert_eq!(
        sub_requests(&server).len(),
        0,
        "no sub-call reached the server"
    );
    assert_eq!(json["cache"]["redis_hits"], 10, "{json}");
    assert_eq!(json["cache"]["upstream_calls"], 0, "{json}");

    // Another prefix is another deployment: nothing shared.
    server.reset();
    let (code, _, stderr) = run(
        &server,
        &context,
        &["--redis", &url, "--redis-prefix", "other"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sub_requests(&server).len(), 10);
}

async fn a_run_survives_redis_going_away() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    let dir = TempDir::new("outage");
    let context = dir.file("context.txt", "a corpus");
    // 40 sub-calls of 100 ms, 8 at a time, at 600 a minute: about four seconds.
    let server = server(40, Duration::from_millis(100)).await;
    let url = redis.url();
    let child = rlm(&server, &context, &["--rpm", "600", "--redis", &url])
        .spawn()
        .expect("rlm starts");
    // Kill Redis once some sub-calls went through it.
    let start = Instant::now();
    while sub_requests(&server).len() < 10 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.stop();
    let (code, json, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 40", "{json}");
    assert_eq!(sub_requests(&server).len(), 40);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        !warnings.is_empty(),
        "a warning says Redis went away: {stderr}"
    );
    // Once per outage for each use (pacing, cache), not once per call.
    assert!(warnings.len() <= 2, "{stderr}");
    // Still paced, locally once Redis is gone: 30 after the burst of 10 at ~9.85 a second
    // take over 3 s, counted from the root's request (every sub-call follows it), so load can
    // only lengthen it; unpaced, 40 calls of 100 ms, 8 at a time, take 0.5 s. (How smoothly
    // the local limiter spreads them is checked on a paused clock in rlm-openai's pacing
    // tests: arrival times at this server move with the machine's load.)
    let asked = server
        .requests()
        .into_iter()
        .filter(|r| r.model() == ROOT)
        .map(|r| r.at)
        .min()
        .expect("the root was asked");
    let last = sub_requests(&server)
        .iter()
        .map(|r| r.at)
        .max()
        .expect("arrivals");
    let took = last - asked;
    assert!(took >= Duration::from_secs(3), "all within {took:?}");
}

async fn an_unreachable_redis_from_the_start_is_a_warning_not_a_failure() {
    let dir = TempDir::new("nored");
    let context = dir.file("context.txt", "text");
    let server = server(3, Duration::ZERO).await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("redis://:secret-pw@127.0.0.1:{port}");
    let (code, json, stderr) = run(&server, &context, &["--redis", &url, "--rpm", "600"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["answer"], "answers: 3");
    assert!(
        stderr.contains("WARN") && stderr.contains("redis://127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-pw"), "{stderr}");
    // `--json` says so too: the shared rate limits and the cache tier, once each.
    let warnings = json["warnings"].to_string();
    assert!(
        warnings.contains("redis://127.0.0.1") && warnings.contains("rate limits"),
        "{json}"
    );
    assert!(warnings.contains("redis cache"), "{json}");
    assert!(!warnings.contains("secret-pw"), "{json}");
    // A URL that is not a Redis URL is a usage error.
    let (code, _, stderr) = run(&server, &context, &["--redis", "http://nope"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--redis"), "{stderr}");
}

async fn the_environment_names_the_cache_dir_and_empty_variables_mean_unset() {
    let dir = TempDir::new("env");
    let context = dir.file("context.txt", "env corpus");
    let cache = dir.path().join("cache").to_string_lossy().into_owned();
    let server = server(4, Duration::ZERO).await;
    for expected_hits in [0, 4] {
        let child = rlm(&server, &context, &[])
            .env("RLM_CACHE_DIR", &cache)
            .spawn()
            .expect("rlm starts");
        let (code, json, stderr) = finish(child).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(json["cache"]["disk_hits"], expected_hits, "{json}");
    }
    let child = rlm(&server, &context, &[])
        .env("RLM_CACHE_DIR", "")
        .env("RLM_REDIS_URL", "")
        .spawn()
        .expect("rlm starts");
    let (code, json, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["cache"]["disk_hits"], 0, "{json}");
    assert_eq!(json["answer"], "answers: 4");
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .tokio(
            "a_disk_cache_answers_a_rerun_in_a_new_process",
            a_disk_cache_answers_a_rerun_in_a_new_process,
        )
        .tokio(
            "a_cache_dir_that_cannot_be_used_is_a_clear_error",
            a_cache_dir_that_cannot_be_used_is_a_clear_error,
        )
        .tokio(
            "a_corrupt_or_truncated_cache_file_is_a_warning_not_a_failure",
            a_corrupt_or_truncated_cache_file_is_a_warning_not_a_failure,
        )
        .tokio(
            "a_redis_url_this_build_cannot_use_is_a_warning_not_a_failure",
            a_redis_url_this_build_cannot_use_is_a_warning_not_a_failure,
        )
        .tokio(
            "an_unreachable_redis_from_the_start_is_a_warning_not_a_failure",
            an_unreachable_redis_from_the_start_is_a_warning_not_a_failure,
        )
        .tokio(
            "the_environment_names_the_cache_dir_and_empty_variables_mean_unset",
            the_environment_names_the_cache_dir_and_empty_variables_mean_unset,
        )
        .needs(
            "a file the tests can make read-only (a user other than root, or chattr)",
            can_make_read_only(),
        )
        .tokio(
            "a_read_only_cache_file_is_a_warning_not_a_failure",
            a_read_only_cache_file_is_a_warning_not_a_failure,
        )
        .needs_nothing()
        .needs("redis-server", rlm_tests::redis_server_binary().is_some())
        .tokio(
            "four_processes_share_one_rate_limit_through_redis",
            four_processes_share_one_rate_limit_through_redis,
        )
        .tokio(
            "a_second_run_is_answered_from_the_shared_cache",
            a_second_run_is_answered_from_the_shared_cache,
        )
        .tokio(
            "a_run_survives_redis_going_away",
            a_run_survives_redis_going_away,
        )
        .run()
}
