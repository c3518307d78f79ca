//! A test harness (libtest-mimic) for tests that need a component outside Rust.
//!
//! With the standard harness such a test can only return early when its component is
//! missing, and then counts as passed ("ok" in 0.00 s). Here the suite asks first whether
//! the component is there; when it is not, its tests are reported as ignored, so the summary
//! line says so (`test result: ok. 2 passed; 0 failed; 6 ignored`) and one `SKIPPED:` line
//! on stderr says why. Under `CI=true` nothing is skipped: the tests run and a missing
//! component fails them loudly.
//!
//! A test file using it sets `harness = false` for itself in `Cargo.toml` and ends in a
//! `main` that lists its tests:
//!
//! ```no_run
//! use rlm_tests::harness::Suite;
//!
//! async fn answers_are_shared() { /* ... */ }
//! fn a_bad_url_is_refused() { /* ... */ }
//!
//! fn main() -> std::process::ExitCode {
//!     Suite::new()
//!         .needs("redis-server", rlm_tests::redis_server_binary().is_some())
//!         .tokio("answers_are_shared", answers_are_shared)
//!         .needs_nothing()
//!         .test("a_bad_url_is_refused", a_bad_url_is_refused)
//!         .run()
//! }
//! ```

use std::future::Future;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};

/// Whether tests must not be skipped: `CI=true`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// The tests of one file and the components they need.
#[derive(Default)]
pub struct Suite {
    trials: Vec<Trial>,
    /// The missing components the tests added now need (none under CI).
    missing: Vec<String>,
    /// Every missing component of the suite, for the SKIPPED line.
    missing_anywhere: Vec<String>,
    /// How many of the tests were skipped.
    needing: usize,
}

impl Suite {
    /// An empty suite.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tests added after this need `component`, which is there when `found`.
    pub fn needs(mut self, component: &str, found: bool) -> Self {
        if !found && !in_ci() {
            self.missing.push(component.to_owned());
            if !self.missing_anywhere.iter().any(|c| c == component) {
                self.missing_anywhere.push(component.to_owned());
            }
        }
        self
    }

    /// The tests added after this need no component (until the next [`needs`](Self::needs)):
    /// for a file whose tests need different components.
    pub fn needs_nothing(mut self) -> Self {
        self.missing.clear();
        self
    }

    fn add(mut self, trial: Trial) -> Self {
        let skip = !self.missing.is_empty();
        if skip {
            self.needing += 1;
        }
        self.trials.push(trial.with_ignored_flag(skip));
        self
    }

    /// A plain test.
    pub fn test(self, name: &str, test: fn()) -> Self {
        self.add(Trial::test(name, move || {
            test();
            Ok(())
        }))
    }

    /// An async test on a current-thread tokio runtime (as `#[tokio::test]`).
    pub fn tokio<F, Fut>(self, name: &str, test: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        self.add(Trial::test(name, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))?
                .block_on(test());
            Ok(())
        }))
    }

    /// Runs the tests selected by the command line, and says which were skipped and why.
    pub fn run(self) -> ExitCode {
        let args = Arguments::from_args();
        if self.needing > 0 && !args.list {
            eprintln!(
                "SKIPPED: {} test{} ignored: {} not installed (.ci/run installs {}; under \
                 CI=true they fail instead)",
                self.needing,
                if self.needing == 1 { "" } else { "s" },
                self.missing_anywhere.join(", "),
                if self.missing_anywhere.len() == 1 {
                    "it"
                } else {
                    "them"
                },
            );
        }
        libtest_mimic::run(&args, self.trials).exit_code()
    }
}
