//! A machine without a program the tests need stops the test binary with one line naming the
//! fix, instead of one panic and backtrace per test.

use crate::TestkitError;

/// Prints `message` (which names what to install) as one line on standard error and ends the
/// test process with a failure status (101, a panic's). Tests never skip: the run fails, once,
/// with the fix in front of the reader.
#[allow(clippy::print_stderr)] // the one line the person running the tests must read
pub fn missing_prerequisite(message: &str) -> ! {
    let line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("\nmissing prerequisite: {line}\n");
    std::process::exit(101)
}

/// `result`'s value; a missing prerequisite stops the process ([`missing_prerequisite`]), any
/// other error panics with its message.
///
/// # Panics
/// On an error that is not a missing prerequisite.
pub fn require<T>(result: Result<T, TestkitError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) if error.is_missing_prerequisite() => missing_prerequisite(&error.to_string()),
        Err(error) => panic!("{error}"),
    }
}
