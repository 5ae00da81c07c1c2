//! The Python seeds' own packages, for tests that run their unmodified
//! clients and servers against busline: a venv made once per target
//! directory from `requirements.txt` (by `setup-venv`, which `.ci/run`
//! also runs), and Python scripts run in it.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The venv's `python`, made on first use; `None` (the test says it is
/// skipped) only when there is no `python3` at all. A venv that cannot be
/// made (no registry) fails the test: that is a broken machine, not a
/// reason to skip.
pub fn python(test: &str) -> Option<PathBuf> {
    static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = VENV.get_or_init(|| {
        let have = Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !have {
            return None;
        }
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seeds");
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seeds-venv");
        let status = Command::new(here.join("setup-venv"))
            .arg(&venv)
            .status()
            .expect("tests/seeds/setup-venv runs");
        assert!(
            status.success(),
            "tests/seeds/setup-venv could not make the Python venv ({status}): \
             the seed packages come from the Python package registry"
        );
        Some(venv.join("bin/python"))
    });
    if found.is_none() {
        eprintln!("python3 not found; skipping {test}");
    }
    found.clone()
}

/// A Python script running in the background, killed (and reaped) on drop
/// so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Script(Option<Child>);

impl Script {
    /// Start `python -c code args...`, its stdout piped.
    pub fn start(python: &Path, code: &str, args: &[&str]) -> Script {
        let child = Command::new(python)
            .arg("-c")
            .arg(code)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python starts");
        Script(Some(child))
    }

    /// Wait up to `limit` for the script to end, and return what it
    /// printed; fails the test if it did not end or ended in an error.
    pub fn finish(mut self, limit: Duration) -> String {
        let mut child = self.0.take().expect("not finished yet");
        let start = Instant::now();
        while child.try_wait().expect("wait on python").is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().expect("python output");
                panic!(
                    "the Python script ran over {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        checked(child.wait_with_output().expect("python output"))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run `python -c code args...` to its end (at most `limit`), returning
/// its stdout.
pub fn run(python: &Path, code: &str, args: &[&str], limit: Duration) -> String {
    Script::start(python, code, args).finish(limit)
}

fn checked(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Python script failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
