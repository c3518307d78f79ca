//! The `rlm_rs` Python package, tested from Python: the wheel is built with maturin (once
//! per test process, into `target/maturin`), installed into a directory of its own, and
//! the pytest files beside this one run with it against the loopback mock model server.
//!
//! The interpreter, maturin and pytest come from the test environment
//! (`rlm_tests::python::venv`, the pinned `tests/python/requirements-ci.txt`). Without it
//! (or without a Rust toolchain for maturin) the tests show as ignored; under `CI=true` they
//! run and fail instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};

/// Where built things go: beside the test binaries' target directory.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    rlm_tests::python::venv().expect("the Python test environment (see the SKIPPED line)")
}

/// Whether the environment has maturin and pytest.
fn toolchain_usable() -> bool {
    rlm_tests::python::venv().is_some_and(|python| {
        std::process::Command::new(python)
            .args(["-c", "import maturin, pytest"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The wheel, built once per process (a debug build: tests, not speed).
fn wheel() -> PathBuf {
    static WHEEL: OnceLock<PathBuf> = OnceLock::new();
    WHEEL
        .get_or_init(|| {
            let python = python();
            let out = target_dir().join("maturin/wheels");
            let _ = std::fs::remove_dir_all(&out);
            let maturin = python.with_file_name("maturin");
            let output = std::process::Command::new(&maturin)
                .args(["build", "--profile", "dev", "-m"])
                .arg(crate_dir().join("Cargo.toml"))
                .arg("--out")
                .arg(&out)
                .env("CARGO_TARGET_DIR", target_dir().join("maturin"))
                .stdin(Stdio::null())
                .output()
                .expect("maturin starts");
            assert!(
                output.status.success(),
                "maturin build failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::read_dir(&out)
                .expect("the wheel directory")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
                .expect("maturin made a wheel")
        })
        .clone()
}

/// The wheel installed into a directory of its own (put on `PYTHONPATH`), once.
fn site() -> PathBuf {
    static SITE: OnceLock<PathBuf> = OnceLock::new();
    SITE.get_or_init(|| {
        let wheel = wheel();
        let site = target_dir().join("maturin/site");
        let _ = std::fs::remove_dir_all(&site);
        let output = std::process::Command::new(python())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-index",
                "--target",
            ])
            .arg(&site)
            .arg(&wheel)
            .stdin(Stdio::null())
            .output()
            .expect("pip starts");
        assert!(
            output.status.success(),
            "pip install of the wheel failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        site
    })
    .clone()
}

/// Counters the Python tests read through the mock (`model: "__stats__"`).
#[derive(Default)]
struct Stats {
    slow_started: AtomicUsize,
}

/// The scripted models of every test, by name.
fn handler(
    stats: Arc<Stats>,
    server: Arc<OnceLock<MockServer>>,
) -> impl Fn(&ServerRequest) -> Reply + Send + Sync + 'static {
    move |request: &ServerRequest| {
        let turn = |replies: &[&str]| {
            let replies: Vec<String> = replies.iter().map(|r| (*r).to_owned()).collect();
            scripted_turn(request, &replies)
        };
        match request.model() {
            "__stats__" => {
                let in_flight = server.get().map_or(0, MockServer::in_flight);
                Reply::completion_for(
                    request,
                    serde_json::json!({
                        "slow_started": stats.slow_started.load(Ordering::SeqCst),
                        "in_flight": in_flight,
                    })
                    .to_string(),
                )
            }
            "root-echo" => {
                turn(&["Let me ask.\n\n```repl\nFINAL(llm_query(\"echo: \" + context));\n```"])
            }
            "root-shape" => turn(&[
                "```repl\nprint(type_of(context));\nprint(context.len());\n```",
                "FINAL(seen)",
            ]),
            "root-tools" => turn(&[
                "```repl\nlet a = lookup(#{city: \"Paris\"});\nlet b = boom(\"x\");\nlet c = slow_double(21);\nFINAL(`${a.population}|${b}|${c}`);\n```",
            ]),
            "root-slow" => turn(&[
                "```repl\nlet r = llm_batch([\"slow 1\", \"slow 2\", \"slow 3\"]);\nFINAL(r[0]);\n```",
            ]),
            "root-late" => turn(&["```repl\nFINAL(\"late \" + llm_query(\"x\"));\n```"])
                .after(Duration::from_millis(300)),
            "slow-sub" => {
                stats.slow_started.fetch_add(1, Ordering::SeqCst);
                Reply::completion_for(request, "too late").after(Duration::from_secs(300))
            }
            "batch-sub" => {
                let prompt = request.last_user().to_owned();
                if prompt == "prompt 13" {
                    Reply::error(
                        400,
                        "invalid_request_error",
                        "bad_prompt",
                        "prompt 13 is refused",
                    )
                } else {
                    Reply::completion_for(request, format!("answer to {prompt}"))
                        .after(Duration::from_millis(20))
                }
            }
            "root-script-exhausted" => turn(&[]),
            "root-typed" => turn(&["```repl\nFINAL(#{name: \"Ada\", born: 1815});\n```"; 12]),
            "root-session" => {
                let asks_twice = request.messages().iter().any(|m| {
                    m["role"] == "user"
                        && m["content"].as_str().is_some_and(|c| c.contains("Q-TWO"))
                });
                let reply = if asks_twice {
                    "```repl\nFINAL(total * 2);\n```"
                } else {
                    "```repl\nlet total = 40 + 2;\nFINAL(total);\n```"
                };
                Reply::completion_for(request, reply)
            }
            _ => Reply::completion_for(request, request.last_user().to_uppercase()),
        }
    }
}

/// A mock model server for one test.
async fn mock() -> (Arc<OnceLock<MockServer>>, String) {
    let cell = Arc::new(OnceLock::new());
    let server = MockServer::start(handler(Arc::default(), Arc::clone(&cell)))
        .await
        .expect("mock server");
    let base = server.base_url();
    let _ = cell.set(server);
    (cell, base)
}

/// Runs one pytest test (`file::name`) with the installed wheel and `base_url` for the mock.
async fn pytest(test: &str, base_url: &str) {
    let python = python();
    let site = site();
    let mut pythonpath = OsString::from(site.as_os_str());
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        pythonpath.push(":");
        pythonpath.push(old);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
            .arg(crate_dir().join("tests").join(test))
            .current_dir(crate_dir().join("tests"))
            .env("PYTHONPATH", pythonpath)
            .env("RLM_TEST_BASE_URL", base_url)
            .env("OPENAI_API_KEY", "sk-test-never-print-me")
            .env_remove("OPENAI_BASE_URL")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pytest finished (a safety bound, not a timing assertion)")
    .expect("pytest starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "pytest {test} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("sk-test-never-print-me") && !stderr.contains("sk-test-never-print-me"),
        "the API key was printed"
    );
}

macro_rules! pytests {
    ($($name:ident => $test:literal),* $(,)?) => {
        $(
            async fn $name() {
                let (_server, base) = mock().await;
                pytest($test, &base).await;
            }
        )*
    };
}

pytests! {
    completion_against_the_mock => "test_completion.py",
    python_tools => "test_tools.py",
    python_backends => "test_backend.py",
    event_loops_and_threads => "test_async.py",
    keyboard_interrupt_stops_the_sub_calls => "test_interrupt.py",
    typed_answers => "test_typed.py",
    sessions => "test_session.py",
    rlm_batch_jobs => "test_jobs.py",
}

/// 200 prompts at most 8 in flight at the server, in order, one failing item.
async fn batch_completion_is_bounded_and_ordered() {
    let (server, base) = mock().await;
    pytest("test_batch.py", &base).await;
    let server = server.get().expect("the server");
    let sub_requests = server
        .requests()
        .iter()
        .filter(|r| r.model() == "batch-sub" && r.last_user().starts_with("prompt "))
        .count();
    // 200 distinct prompts, each sent once: the failing one is not retried (a 400 is final),
    // and the later batch of 10 of the same prompts is answered by the cache.
    assert_eq!(sub_requests, 200, "each distinct prompt is sent once");
    assert!(
        server.peak_in_flight() <= 8,
        "peak in flight {} > max_concurrent 8",
        server.peak_in_flight()
    );
}

/// The wheel installs into a fresh virtual environment (pip, no index) and imports there.
async fn the_wheel_installs_into_a_fresh_venv() {
    let wheel = wheel();
    let dir = target_dir().join("maturin/fresh-venv");
    let _ = std::fs::remove_dir_all(&dir);
    let status = tokio::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .await
        .expect("python3 -m venv starts");
    assert!(status.success());
    let output = tokio::process::Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
        ])
        .arg(&wheel)
        .output()
        .await
        .expect("pip starts");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = tokio::process::Command::new(dir.join("bin/python"))
        .args([
            "-c",
            "import rlm_rs, pathlib; p = pathlib.Path(rlm_rs.__file__).parent; \
             assert (p / 'py.typed').exists() and (p / '__init__.pyi').exists(); \
             assert issubclass(rlm_rs.UsageError, rlm_rs.RlmError); \
             print(rlm_rs.__version__, rlm_rs.RLM.__doc__.splitlines()[0])",
        ])
        .current_dir(&dir)
        .output()
        .await
        .expect("python starts");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with(env!("CARGO_PKG_VERSION")), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .needs(
            "a Python with maturin and pytest (target/venv-ci, made from PyPI by the tests; or RLM_TEST_PYTHON)",
            toolchain_usable(),
        )
        .tokio("completion_against_the_mock", completion_against_the_mock)
        .tokio("python_tools", python_tools)
        .tokio("python_backends", python_backends)
        .tokio("event_loops_and_threads", event_loops_and_threads)
        .tokio(
            "keyboard_interrupt_stops_the_sub_calls",
            keyboard_interrupt_stops_the_sub_calls,
        )
        .tokio("typed_answers", typed_answers)
        .tokio("sessions", sessions)
        .tokio("rlm_batch_jobs", rlm_batch_jobs)
        .tokio(
            "batch_completion_is_bounded_and_ordered",
            batch_completion_is_bounded_and_ordered,
        )
        .tokio(
            "the_wheel_installs_into_a_fresh_venv",
            the_wheel_installs_into_a_fresh_venv,
        )
        .run()
}
