//! A missing prerequisite stops the test process with one line naming the fix: no panic, no
//! backtrace, a failure status. Checked in a child process (this same test binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const CHILD: &str = "TESTKIT_PREREQUISITE_CHILD";

fn run_child(test: &str, mode: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

#[test]
fn a_missing_prerequisite_stops_the_run_with_one_line() {
    match std::env::var(CHILD).as_deref() {
        Ok("missing") => {
            testkit::missing_prerequisite("the thing is missing:\n    `sudo apt-get install thing`")
        }
        Ok("missing-via-require") => {
            let result: Result<(), _> = Err(testkit::TestkitError::NoPgBouncer("/nowhere".into()));
            testkit::require(result);
            return;
        }
        Ok("other-error") => {
            let result: Result<(), _> = Err(testkit::TestkitError::NoUnprivilegedUser("x".into()));
            // Positive control for the classification: a missing user is a prerequisite too.
            assert!(result.as_ref().unwrap_err().is_missing_prerequisite());
            return;
        }
        _ => {}
    }
    let test = "a_missing_prerequisite_stops_the_run_with_one_line";
    let out = run_child(test, "missing");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("missing prerequisite: the thing is missing: `sudo apt-get install thing`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");

    let out = run_child(test, "missing-via-require");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("sudo apt-get install pgbouncer"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The same binary runs to success when nothing is missing.
    let out = run_child(test, "other-error");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn any_other_error_still_panics() {
    let caught = std::panic::catch_unwind(|| {
        testkit::require::<()>(Err(testkit::TestkitError::Io {
            context: "reading".into(),
            source: std::io::Error::other("disk"),
        }));
    });
    assert!(caught.is_err());
    assert_eq!(testkit::require::<u8>(Ok(7)), 7);
}
