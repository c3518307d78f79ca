//! The Python the tests drive: a virtual environment at `target/venv-ci` with the exact
//! packages of `tests/python/requirements-ci.txt`, made by the first test that needs it.
//!
//! [`venv`] returns its interpreter, creating the environment when it is missing or was
//! made from another requirements file (`python3 -m venv`, then `pip install --no-deps -r`
//! from the package index), under a file lock so that test binaries running at once do not
//! race; the stamp `target/venv-ci/.requirements-ci.txt` records what it was made from.
//! `RLM_TEST_PYTHON` names another interpreter instead (nothing is created then).
//!
//! A test file asks the [`harness`](crate::harness) whether to run:
//! `Suite::new().needs("a Python test environment", rlm_tests::python::venv().is_some())`:
//! without one its tests are skipped (and fail under `CI=true`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The requirements file every Python test dependency is pinned in.
pub fn requirements() -> PathBuf {
    workspace_root().join("tests/python/requirements-ci.txt")
}

/// The environment's directory: `target/venv-ci` beside the workspace.
pub fn venv_dir() -> PathBuf {
    workspace_root().join("target/venv-ci")
}

/// The Python interpreter of the test environment (made or brought up to date first), or
/// `None` when there is none and it cannot be made (no `python3`, no package index): the
/// reason is printed on stderr. The answer is computed once per process.
pub fn venv() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(python) = std::env::var_os("RLM_TEST_PYTHON") {
                return Some(PathBuf::from(python));
            }
            match ensure(&venv_dir(), &requirements()) {
                Ok(python) => Some(python),
                Err(reason) => {
                    eprintln!("the Python test environment is not available: {reason}");
                    None
                }
            }
        })
        .clone()
}

/// Whether the environment at `dir` was made from `requirements` as it is now.
fn up_to_date(dir: &Path, requirements: &[u8]) -> bool {
    dir.join("bin/python").exists()
        && std::fs::read(dir.join(".requirements-ci.txt")).is_ok_and(|stamp| stamp == requirements)
}

fn ensure(dir: &Path, requirements_file: &Path) -> Result<PathBuf, String> {
    let requirements = std::fs::read(requirements_file)
        .map_err(|e| format!("cannot read {}: {e}", requirements_file.display()))?;
    let python = dir.join("bin/python");
    if up_to_date(dir, &requirements) {
        return Ok(python);
    }
    let parent = dir.parent().ok_or("the environment's path has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let _lock = Lock::take(&parent.join("venv-ci.lock"))?;
    // Another process may have made it while this one waited.
    if up_to_date(dir, &requirements) {
        return Ok(python);
    }
    // A symbolic link (another checkout's environment) is removed, not followed.
    if dir.symlink_metadata().is_ok() {
        let removed = if dir.is_symlink() {
            std::fs::remove_file(dir)
        } else {
            std::fs::remove_dir_all(dir)
        };
        removed.map_err(|e| format!("cannot remove the stale {}: {e}", dir.display()))?;
    }
    eprintln!(
        "making the Python test environment {} from {} (once)",
        dir.display(),
        requirements_file.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(dir))?;
    run(Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
        ])
        .arg(requirements_file))?;
    std::fs::write(dir.join(".requirements-ci.txt"), &requirements)
        .map_err(|e| format!("cannot write the stamp: {e}"))?;
    Ok(python)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// An exclusive lock on a file, held until dropped (`flock`, released by the system if the
/// process dies).
struct Lock {
    /// Held for its lock, released when closed.
    _file: std::fs::File,
}

impl Lock {
    fn take(path: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open the lock {}: {e}", path.display()))?;
        #[cfg(unix)]
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(Self { _file: file })
    }
}
